"""CPU check of the streaming engine: pipeline vs forward-only ceiling vs naive loop, one run.

The measurements are those of ``bench_extract.py`` (which now runs on
:mod:`clipdetect.features.pipeline`): (a) ``extract()`` end to end (decoder workers, encoder
stage, cache writes), (b) one image at a time, (c) the model's forward pass alone on batches
already decoded and preprocessed — interleaved in rounds, medians printed with a/b and a/c
(target on the 2-core CPU: a/c >= 0.9). Results go to experiments/results/bench_pipeline.json.

    PYTHONPATH=. python experiments/bench_pipeline.py --images 192 --batch-size 32 --workers 1 --repeats 2
"""
import contextlib
import io
import json
import sys

import bench_extract
from common import RESULTS, save_json


def main(argv=None) -> int:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = bench_extract.main(argv)
    text = buf.getvalue()
    print(text, end="")
    save_json(RESULTS / "bench_pipeline.json", {"command": "python experiments/bench_pipeline.py "
                                                + " ".join(argv or sys.argv[1:]), **json.loads(text)})
    return rc


if __name__ == "__main__":
    sys.exit(main())
