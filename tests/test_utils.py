"""share4v.utils: where a process stands among those a launcher started."""

from share4v.utils import DistInfo, dist_info


def test_dist_info_reads_the_launchers_variables():
    assert dist_info({}) == DistInfo(rank=0, local_rank=0, world_size=1, launched=False)  # started alone
    torchrun = {"RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "16"}
    assert dist_info(torchrun) == DistInfo(rank=9, local_rank=1, world_size=16, launched=True)
    # local rank 0 of a launcher is not a process started alone, though both are local rank 0
    assert dist_info({"LOCAL_RANK": "0"}).launched and not dist_info({"RANK": "0", "WORLD_SIZE": "1"}).launched
