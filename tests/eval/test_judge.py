"""The GPT-judged benchmarks (LLaVA-Bench-in-the-Wild, MM-Vet) against a local fake OpenAI-compatible server: the
prompts as the originals lay them out, score parsing, the judgement cache, retries, one-line failures, and the
summaries computed by hand."""

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("httpx")

from share4v.appended_jsonl import read_appended_jsonl
from share4v.eval import eval_gpt_review_bench as bench
from share4v.eval import eval_mmvet as mmvet
from share4v.eval import summarize_gpt_review as summarize
from share4v.eval.judge import Judge, JudgeConfig, JudgeError, cache_key
from share4v.eval.scores import read_scores

ENV = ("SHARE4V_JUDGE_MODEL", "OPENAI_BASE_URL", "OPENAI_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
       "http_proxy", "https_proxy", "all_proxy")  # fmt: skip


class FakeOpenAI:
    """A local /v1/chat/completions: records every request; replies from `queue` (status, body, headers, delay),
    else with `always`, else with the text `answer(body)` returns."""

    def __init__(self):
        self.requests: list[dict] = []
        self.queue: list[tuple] = []
        self.always: tuple | None = None
        self.answer = lambda body: "8 9\nBoth fine."
        self.url = ""

    @property
    def bodies(self) -> list[dict]:
        return [request["body"] for request in self.requests]

    def reply(self, body: dict) -> tuple:
        if self.queue:
            return self.queue.pop(0)
        if self.always is not None:
            return self.always
        completion = {"id": "x", "object": "chat.completion", "model": body["model"] + "-served",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": self.answer(body)},
                                   "finish_reason": "stop"}]}  # fmt: skip
        return 200, completion, {}, 0.0


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        fake = self.server.fake
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        status, payload, headers, delay = fake.reply(body)
        time.sleep(delay)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client gave up (timeout test)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def fake_openai_server():
    """A `FakeOpenAI` answering on 127.0.0.1 (its `url` ends in /v1) while the block runs."""
    fake = FakeOpenAI()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.fake = fake
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    with fake_openai_server() as fake:
        yield fake


def error(status: int, message: str, headers=None) -> tuple:
    return status, {"error": {"message": message, "type": "x"}}, headers or {}, 0.0


def judge_flags(server, *extra: str) -> list[str]:
    return ["--base-url", server.url, "--api-key", "test-key", "--judge-model", "judge-1", "--retry-backoff", "0.001",
            *extra]  # fmt: skip


def write_lines(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ---- LLaVA-Bench-in-the-Wild --------------------------------------------------------------------------------------


@pytest.fixture
def llavabench(tmp_path):
    questions = write_lines(tmp_path / "questions.jsonl", [
        {"question_id": 1, "image": "001.jpg", "text": "What color is the bus?", "category": "conv"},
        {"question_id": 2, "image": "002.jpg", "text": "Describe the photo.", "category": "detail"},
    ])  # fmt: skip
    context = write_lines(tmp_path / "context.jsonl", [
        {"id": "a", "image": "001.jpg", "caption": ["A red bus.", "It is on a street."]},
        {"id": "b", "image": "002.jpg", "caption": "A dog on a beach."},
    ])  # fmt: skip
    reference = write_lines(tmp_path / "answers_gpt4.jsonl", [
        {"question_id": 1, "text": "Red.", "answer_id": "g1"},
        {"question_id": 2, "text": "A dog runs.", "answer_id": "g2"},
    ])  # fmt: skip
    ours = write_lines(tmp_path / "ours.jsonl", [
        {"question_id": 2, "text": "A dog.", "answer_id": "o2"},
        {"question_id": 1, "text": "It is red.", "answer_id": "o1"},
    ])  # fmt: skip
    output = tmp_path / "rev.jsonl"
    flags = ["-q", str(questions), "-c", str(context), "-a", str(reference), str(ours), "-o", str(output)]
    return flags, output


def test_review_prompts_follow_the_original_layout(server, llavabench):
    flags, output = llavabench
    server.answer = lambda body: "8 9\nGood." if "bus" in body["messages"][1]["content"] else "7, 6\nFine."
    assert bench.main([*flags, *judge_flags(server)]) == 0
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions"] * 2
    assert server.requests[0]["headers"]["Authorization"] == "Bearer test-key"
    rule = json.loads(bench.DEFAULT_RULE_FILE.read_text())["llava_bench_conv"]["prompt"]
    assert rule.startswith("We would like to request your feedback on the performance of two AI assistants")
    content = ("[Context]\nA red bus.\nIt is on a street.\n\n[Question]\nWhat color is the bus?\n\n"
               "[Assistant 1]\nRed.\n\n[End of Assistant 1]\n\n[Assistant 2]\nIt is red.\n\n[End of Assistant 2]\n\n"
               f"[System]\n{rule}\n\n")  # fmt: skip
    assert server.bodies[0] == {
        "model": "judge-1",
        "messages": [{"role": "system", "content": "You are a helpful and precise assistant for checking the quality "
                                                   "of the answer."}, {"role": "user", "content": content}],
        "temperature": 0.2,
        "max_tokens": 1024,
    }  # fmt: skip
    assert server.bodies[1]["messages"][1]["content"].startswith("[Context]\nA dog on a beach.\n\n[Question]\nDescribe")
    assert read_appended_jsonl(output) == [
        {"id": 1, "question_id": 1, "answer1_id": "g1", "answer2_id": "o1", "category": "llava_bench_conv",
         "content": "8 9\nGood.", "tuple": [8.0, 9.0]},
        {"id": 2, "question_id": 2, "answer1_id": "g2", "answer2_id": "o2", "category": "llava_bench_detail",
         "content": "7, 6\nFine.", "tuple": [7.0, 6.0]},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("review", "scores"),
    [("8 9", [8, 9]), ("8, 9", [8, 9]), ("8,9\nThe first is better.", [8, 9]), ("8\t9", [8, 9]),
     ("  7.5   6 \nok", [7.5, 6]), ("Assistant 1: 8, Assistant 2: 9", [-1, -1]), ("8", [-1, -1]), ("", [-1, -1]),
     ("8 9 10", [-1, -1]), ("eight nine", [-1, -1]), ("nan 9", [-1, -1]), ("\n8 9", [-1, -1])],
)  # fmt: skip
def test_scores_are_the_first_lines_two_numbers(review, scores):
    assert bench.parse_score(review) == scores


def test_an_unreadable_score_line_keeps_the_review_with_minus_ones(server, llavabench):
    flags, output = llavabench
    server.answer = lambda body: "Assistant 1 scores 8 and Assistant 2 scores 9."
    bench.main([*flags, *judge_flags(server)])
    rows = read_appended_jsonl(output)
    assert [row["tuple"] for row in rows] == [[-1, -1], [-1, -1]]
    assert rows[0]["content"] == "Assistant 1 scores 8 and Assistant 2 scores 9."


def test_a_rerun_makes_no_request_for_judged_items(server, llavabench):
    flags, output = llavabench
    bench.main([*flags, *judge_flags(server)])
    first = output.read_text()
    assert len(server.requests) == 2
    bench.main([*flags, *judge_flags(server)])  # resumed from the output
    output.unlink()
    bench.main([*flags, *judge_flags(server)])  # answered from the cache
    assert len(server.requests) == 2 and output.read_text() == first
    cache = output.with_name("rev.jsonl.judge-cache")
    cache.unlink()
    output.write_text(first.splitlines()[0] + "\n" + first.splitlines()[1][:25])  # the second line torn by a kill
    bench.main([*flags, *judge_flags(server)])
    assert len(server.requests) == 3 and output.read_text() == first


def test_the_cache_key_covers_model_messages_temperature_and_max_tokens():
    messages = [{"role": "user", "content": "a"}]
    key = cache_key("m", messages, 0.2, 8)
    assert key == cache_key("m", [{"content": "a", "role": "user"}], 0.2, 8)
    others = [cache_key("n", messages, 0.2, 8), cache_key("m", [{"role": "user", "content": "b"}], 0.2, 8),
              cache_key("m", messages, 0.0, 8), cache_key("m", messages, 0.2, 9)]  # fmt: skip
    assert key not in others and len(set(others)) == 4


def test_the_cache_survives_a_torn_last_line(server, tmp_path):
    cache = tmp_path / "judge.cache"
    messages = [{"role": "user", "content": "cached"}]
    row = {"key": cache_key("judge-1", messages, 0.2, 8), "model": "judge-1", "text": "7 7"}
    cache.write_text(json.dumps(row) + "\n" + '{"key": "abc", "mod')
    config = JudgeConfig.resolve("judge-1", server.url, cache_file=cache)
    with Judge(config) as judge:
        assert judge.complete(messages, temperature=0.2, max_tokens=8).text == "7 7"
        assert server.requests == []
        assert (
            judge.complete([{"role": "user", "content": "new"}], temperature=0.2, max_tokens=8).text
            == "8 9\nBoth fine."
        )
    lines = cache.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["key"] for line in lines)
    with Judge(config) as judge:
        judge.complete([{"role": "user", "content": "new"}], temperature=0.2, max_tokens=8)
    assert len(server.requests) == 1


def test_429_and_500_are_retried_with_backoff_honouring_retry_after(server):
    server.queue = [error(429, "slow down", {"Retry-After": "2"}), error(500, "oops")]
    sleeps = []
    config = JudgeConfig.resolve("judge-1", server.url, backoff_s=0.01)
    with Judge(config, sleep=sleeps.append, rng=lambda: 0.5) as judge:
        reply = judge.complete([{"role": "user", "content": "hi"}], temperature=0.2, max_tokens=8)
    assert reply.text == "8 9\nBoth fine." and reply.model == "judge-1-served" and not reply.cached
    assert len(server.requests) == 3
    assert sleeps == [2.0, pytest.approx(0.01 * 2 * 0.75)]  # Retry-After, then backoff 0.01·2^1 with jitter 0.75


def test_a_timeout_is_retried(server):
    server.queue = [(200, {"choices": []}, {}, 1.0)]  # answers too late
    config = JudgeConfig.resolve("judge-1", server.url, timeout_s=0.2, backoff_s=0.0)
    with Judge(config) as judge:
        assert judge.complete([{"role": "user", "content": "hi"}], temperature=0.2, max_tokens=8).text
    assert len(server.requests) == 2


def test_backoff_is_bounded_and_retry_after_capped(server):
    config = JudgeConfig.resolve("judge-1", server.url, backoff_s=1.0, max_backoff_s=5.0)
    with Judge(config, rng=lambda: 0.999) as judge:
        assert [round(judge._delay(attempt, None), 2) for attempt in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
        assert judge._delay(0, 600.0) == 5.0


def test_the_last_failure_is_one_line(server, llavabench):
    flags, _ = llavabench
    server.always = error(503, "The engine is\noverloaded")
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*flags, *judge_flags(server, "--max-retries", "2")])
    message = str(exit_info.value.code)
    assert (
        "\n" not in message and "failed after 3 attempts" in message and "HTTP 503: The engine is overloaded" in message
    )
    assert len(server.requests) == 3


def test_an_error_a_retry_cannot_fix_fails_at_once(server):
    server.always = error(401, "Incorrect API key provided")
    with Judge(JudgeConfig.resolve("judge-1", server.url)) as judge:
        with pytest.raises(JudgeError, match=r"HTTP 401: Incorrect API key provided \(set OPENAI_API_KEY"):
            judge.complete([{"role": "user", "content": "hi"}], temperature=0.2, max_tokens=8)
    assert len(server.requests) == 1
    server.always = (200, b"<html>not an API</html>", {"Content-Type": "text/html"}, 0.0)
    with Judge(JudgeConfig.resolve("judge-1", server.url)) as judge:
        with pytest.raises(JudgeError, match="did not answer with a chat completion"):
            judge.complete([{"role": "user", "content": "hi"}], temperature=0.2, max_tokens=8)


def test_bad_input_is_one_line(server, llavabench, tmp_path):
    flags, _ = llavabench
    write_lines(tmp_path / "questions.jsonl", [{"question_id": 1, "image": "001.jpg", "text": "Q", "category": "conv"},
                                               {"question_id": 2, "image": "002.jpg", "text": "Q"}])  # fmt: skip
    with pytest.raises(SystemExit, match=r"questions.jsonl:2: missing field 'category'"):
        bench.main([*flags, *judge_flags(server)])
    write_lines(tmp_path / "questions.jsonl", [{"question_id": 3, "image": "001.jpg", "text": "Q", "category": "conv"}])
    with pytest.raises(SystemExit, match=r"answers_gpt4.jsonl: no answer for question_id 3"):
        bench.main([*flags, *judge_flags(server)])
    write_lines(tmp_path / "questions.jsonl", [{"question_id": 1, "image": "001.jpg", "text": "Q", "category": "poem"}])
    with pytest.raises(SystemExit, match=r"rule.json: no rule 'llava_bench_poem'"):
        bench.main([*flags, *judge_flags(server)])
    assert server.requests == []


def test_config_comes_from_arguments_then_environment_then_defaults():
    environ = {"SHARE4V_JUDGE_MODEL": "env-model", "OPENAI_BASE_URL": "http://env/v1/", "OPENAI_API_KEY": "env-key"}
    config = JudgeConfig.resolve(environ=environ)
    assert (config.model, config.base_url, config.api_key) == ("env-model", "http://env/v1", "env-key")
    config = JudgeConfig.resolve("flag-model", "https://flag/v1", "flag-key", environ=environ)
    assert (config.model, config.base_url, config.api_key) == ("flag-model", "https://flag/v1", "flag-key")
    config = JudgeConfig.resolve(environ={})
    assert (config.model, config.base_url, config.api_key) == ("gpt-4o-2024-08-06", "https://api.openai.com/v1", None)
    with pytest.raises(ValueError, match="not an http"):
        JudgeConfig.resolve(base_url="api.openai.com", environ={})


def test_help_shows_the_defaults(capsys):
    for main in (bench.main, mmvet.main, summarize.main):
        with pytest.raises(SystemExit) as exit_info:
            main(["--help"])
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "gpt-4o-2024-08-06" in out and "(default: 1024)" in out and "(default: 8)" in out
    assert "(default: 1)" in out and "rule.json" in out


def test_the_packaged_rules_have_the_original_keys():
    rules = bench.load_rules(bench.DEFAULT_RULE_FILE)
    assert list(rules) == ["coding", "math", "default", "conv", "detail", "complex", "llava_bench_conv",
                           "llava_bench_detail", "llava_bench_complex"]  # fmt: skip
    assert all(rule["role"] == "Assistant" for rule in rules.values())
    assert "a few sentences describing the image. \nPlease rate" in rules["llava_bench_detail"]["prompt"]


# ---- summarize_gpt_review -----------------------------------------------------------------------------------------

REVIEWS = [
    {"question_id": 1, "category": "llava_bench_conv", "tuple": [8.0, 9.0]},
    {"question_id": 2, "category": "llava_bench_conv", "tuple": [6.0, 3.0]},
    {"question_id": 3, "category": "llava_bench_detail", "tuple": [10.0, 5.0]},
]


def test_summary_gives_the_hand_computed_numbers(tmp_path, capsys):
    reviews = write_lines(tmp_path / "share4v-7b.jsonl", REVIEWS)
    scores_file = tmp_path / "scores" / "llavabench.json"
    assert summarize.main(["-f", str(reviews), "--scores-file", str(scores_file)]) == 0
    # all: means 8.0 and 17/3 = 5.667 → 5.667 / 8 = 70.8375 %; conv: 7 and 6 → 85.7 %; detail: 10 and 5 → 50 %
    assert capsys.readouterr().out.splitlines()[:5] == [
        "share4v-7b", "all 70.8 80.0 56.7", "llava_bench_conv 85.7 70.0 60.0", "llava_bench_detail 50.0 100.0 50.0",
        "=================================",
    ]  # fmt: skip
    assert read_scores(scores_file)["benchmark"] == "llavabench"
    assert read_scores(scores_file)["scores"] == {"overall": 70.8, "conv": 85.7, "detail": 50.0,
                                                 "reference_score": 80.0, "model_score": 56.7}  # fmt: skip
    assert summarize.main(["-f", str(reviews), "-i", "3"]) == 0
    assert "all 85.7 70.0 60.0" in capsys.readouterr().out  # question 3 left out: conv only


def test_summary_picks_files_as_the_original(tmp_path, capsys):
    folder = tmp_path / "reviews"
    folder.mkdir()
    for name in ("share4v-7b-0613.jsonl", "share4v-13b.jsonl", "other-7b.jsonl"):
        write_lines(folder / name, REVIEWS)
    (folder / "share4v-7b-0613.jsonl.judge-cache").write_text("{}\n")
    summarize.main(["-d", str(folder), "-s", "share4v", "7b"])
    assert [line for line in capsys.readouterr().out.splitlines() if " " not in line and "=" not in line] == [
        "share4v-7b-0613"
    ]
    summarize.main(["-d", str(folder), "-v", "0314"])
    assert "other-7b\n" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="exactly one review file, got 3"):
        summarize.main(["-d", str(folder), "--scores-file", str(tmp_path / "s.json")])
    (folder / "share4v-13b.jsonl").write_text('{"question_id": 1, "category": "llava_bench_conv", "tuple": [8]}\n')
    with pytest.raises(SystemExit, match=r"share4v-13b.jsonl: row 1: field 'tuple' is not a pair of numbers"):
        summarize.main(["-f", "share4v-13b.jsonl", "-d", str(folder)])


# ---- MM-Vet -------------------------------------------------------------------------------------------------------


@pytest.fixture
def mmvet_files(tmp_path):
    (tmp_path / "mm-vet").mkdir()
    (tmp_path / "mm-vet" / "mm-vet.json").write_text(json.dumps({
        "v1_0": {"capability": ["rec", "ocr"], "question": "What is x?", "answer": "-1<AND>-5"},
        "v1_1": {"capability": ["rec"], "question": "What animal?", "answer": "cat"},
        "v1_2": {"capability": ["ocr", "math"], "question": "Sum?", "answer": "42<OR>forty-two"},
    }))  # fmt: skip
    results = tmp_path / "results" / "share4v-7b.json"
    results.parent.mkdir()
    results.write_text(json.dumps({"v1_0": "x = -1", "v1_1": "a cat", "v1_2": "42"}))
    return tmp_path / "mm-vet", results


def mmvet_grader(body):
    content = body["messages"][0]["content"]
    if content.endswith(mmvet.DIGIT_HINT):
        return "0.2"
    row = content.rsplit("\n", 1)[1]
    return {"What is x? | -1 <AND> -5 | x = -1 | ": "0.5", "What animal? | cat | a cat | ": "1.0 (right)"}.get(
        row, "Correct"
    )


def test_mmvet_scores_each_capability_and_the_total_as_computed_by_hand(server, mmvet_files, capsys):
    mmvet_path, results = mmvet_files
    server.answer = mmvet_grader
    scores_file = results.parent / "mmvet-scores.json"
    assert mmvet.main(["--mmvet-path", str(mmvet_path), "--result-file", str(results), "--scores-file",
                       str(scores_file), *judge_flags(server)]) == 0  # fmt: skip
    prompt = mmvet.load_prompt()
    assert server.bodies[0] == {"model": "judge-1", "temperature": 0.0, "max_tokens": 3, "messages": [
        {"role": "user", "content": prompt + "\nWhat is x? | -1 <AND> -5 | x = -1 | "}]}  # fmt: skip
    # v1_2: "Correct" is no score, so the grader asks again with the digit hint (temperature 0 still) → 0.2
    assert len(server.requests) == 4 and server.bodies[3]["temperature"] == 0.0
    assert server.bodies[3]["messages"][0]["content"] == (
        prompt + "\nSum? | 42 <OR> forty-two | 42 | \nPredict the correctness of the answer (digit): "
    )
    # rec: (0.5 + 1.0) / 2; ocr: (0.5 + 0.2) / 2; math: 0.2 / 1; total: 1.7 / 3 = 56.67 %
    scores = read_scores(scores_file)["scores"]
    assert scores == {"ocr": 35.0, "rec": 75.0, "math": 20.0, "total": 56.7}
    assert list(scores) == ["ocr", "rec", "math", "total"]  # most needed first, ties by name
    out = capsys.readouterr().out
    assert "ocr\trec\tmath\ttotal\n35.0\t75.0\t20.0\t56.7" in out
    assert "math_ocr\tocr_rec\trec\ttotal\n20.0\t50.0\t100.0\t56.7" in out
    grades = read_appended_jsonl(results.parent / "share4v-7b_judge-1-grade.jsonl")
    assert [(g["id"], g["score"], g["attempts"]) for g in grades] == [
        ("v1_0", 0.5, 1),
        ("v1_1", 1.0, 1),
        ("v1_2", 0.2, 2),
    ]
    assert grades[0]["model"] == "judge-1-served" and grades[0]["judge"] == "judge-1"
    (results.parent / "share4v-7b_judge-1-grade.jsonl").unlink()
    assert mmvet.main(["--mmvet-path", str(mmvet_path), "--result-file", str(results), *judge_flags(server)]) == 0
    assert len(server.requests) == 4  # the rerun was answered from the cache


def test_mmvet_gives_zero_after_five_replies_without_a_score(server, mmvet_files):
    server.answer = lambda body: "I cannot tell."
    item = mmvet.load_ground_truth(mmvet_files[0])["v1_1"]
    with Judge(JudgeConfig.resolve("judge-1", server.url)) as judge:
        grade = mmvet.grade(judge, mmvet.load_prompt(), item, "a cat")
    assert grade["score"] == 0.0 and grade["attempts"] == 5 and grade["content"] == "I cannot tell."
    assert [body["temperature"] for body in server.bodies] == [0.0, 0.0, 0.5, 1.0, 1.5]
    assert [mmvet.parse_correctness(text) for text in ("0.7", "1.0\n", "0.3 because", "1.5", "-0.1", "nan", "")] == [
        0.7, 1.0, 0.3, None, None, None, None]  # fmt: skip


def test_the_mmvet_prompt_is_the_official_few_shot_table():
    prompt = mmvet.load_prompt()
    assert prompt.startswith("Compare the ground truth and prediction from AI models, to give a correctness score")
    assert prompt.endswith("their actual physical characteristics. | 1.0\n")
    lines = prompt.splitlines()
    assert lines[2:4] == ["Question | Ground truth | Prediction | Correctness", "--- | --- | --- | ---"]
    assert [line.rsplit(" | ", 1)[1] for line in lines[4:]] == ["0.0", "0.5", "0.5", "0.5", "1.0", "0.4", "1.0"]


def test_mmvet_bad_input_is_one_line(server, mmvet_files):
    mmvet_path, results = mmvet_files
    results.write_text(json.dumps({"v1_0": "x = -1", "v1_1": "a cat"}))
    with pytest.raises(SystemExit, match=r"share4v-7b.json: no answer for 'v1_2' \(1 of 3 missing\)"):
        mmvet.main(["--mmvet-path", str(mmvet_path), "--result-file", str(results), *judge_flags(server)])
    (mmvet_path / "mm-vet.json").write_text(json.dumps({"v1_0": {"question": "Q", "answer": "A"}}))
    with pytest.raises(SystemExit, match=r"mm-vet.json: question 'v1_0' lacks field 'capability'"):
        mmvet.main(["--mmvet-path", str(mmvet_path), "--result-file", str(results), *judge_flags(server)])
    assert server.requests == []
