"""`python -m share4v.data.synthetic --out DIR --num-images N --seed S`: see `share4v.data.synthetic.write`."""

from share4v.data.synthetic.write import main

raise SystemExit(main())
