"""Hostile files, signals and bundles against one checkout of clipdetect: what each attack does.

Runs every attack as a real ``python -m clipdetect`` process (tiny random-weight backbone,
images made here) against the package found under ``--code`` and records the exit status,
the last error line, the seconds, the child's peak RSS, whether a file outside the output
folder changed, what was left behind (temporary files, orphaned processes) and the numbers
the attack is about (rows, scores). Run it on the code before and after a change and
compare the two JSON files::

    python experiments/hostile_before_after.py --code /path/to/old/checkout --out before.json
    python experiments/hostile_before_after.py --code . --out after.json

Every child has a wall-clock limit (``--timeout``, default 60 s; a hang is recorded as
``timed_out``) and an address-space limit (``--memory-gb``, default 6) so that a memory
attack cannot take the machine with it. About three minutes on two cores.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import save_json

TINY = "clipdetect-tiny-vit:random"
FAST = ["--no-progress"]


class Env:
    def __init__(self, code: Path, work: Path, timeout: float, memory_gb: float):
        self.code, self.work, self.timeout, self.memory = code.resolve(), work, timeout, memory_gb

    def env(self):
        return {**os.environ, "PYTHONPATH": str(self.code), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
                "OMP_NUM_THREADS": "1"}

    def run(self, args, *, ready=None, send=None, timeout=None, pre=None):
        """Run ``python -m clipdetect ARGS`` in its own session; ``ready()``: when to send signal
        ``send`` to the child alone. Returns a record with rc, seconds, peak RSS, orphans."""
        limit = int(self.memory * 2**30)

        def child_setup():
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        cmd = [sys.executable, *(pre or ["-m", "clipdetect"]), *map(str, args)]
        err_path = self.work / f"stderr-{time.monotonic_ns()}.txt"
        t0 = time.monotonic()
        with open(err_path, "w") as err:
            proc = subprocess.Popen(cmd, cwd=self.work, env=self.env(), stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True, preexec_fn=child_setup)
        timed_out, signalled = False, None
        deadline = t0 + (timeout or self.timeout)
        status = rusage = None
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if ready is not None and signalled is None and ready():
                os.kill(proc.pid, send)
                signalled = time.monotonic()
            if time.monotonic() > deadline:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, rusage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        seconds = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        orphans = _session_members(proc.pid)
        orphan_rss = sum(_rss_mb(p) for p in orphans)
        for p in orphans:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        text = err_path.read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.strip()]
        return {"rc": proc.returncode, "seconds": round(seconds, 2), "timed_out": timed_out,
                "peak_rss_mb": round(rusage.ru_maxrss / 1024, 1),
                "after_signal_s": round(time.monotonic() - signalled, 2) if signalled else None,
                "orphans": len(orphans), "orphan_rss_mb": round(orphan_rss, 1),
                "traceback": "Traceback" in text, "last_line": lines[-1][:300] if lines else ""}


def _session_members(sid: int):
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def image(seed: int, fake: bool, size=32) -> Image.Image:
    rng = np.random.default_rng(seed)
    if fake:
        yy, xx = np.mgrid[0:size, 0:size]
        arr = np.stack([xx * 8, yy * 8, np.full((size, size), rng.integers(0, 255))], -1) + rng.normal(0, 4, (size, size, 3))
    else:
        arr = rng.integers(0, 255, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def folder(root: Path, n: int) -> Path:
    for label in ("real", "fake"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image(i + (1000 if label == "fake" else 0), label == "fake").save(root / label / f"{i:04d}.png")
    return root


def temp_debris(where: Path):
    return sorted(str(p.relative_to(where)) for p in where.rglob("*") if ".tmp" in p.name)


# ------------------------------------------------------------------------------------ attacks
def setup(e: Env):
    imgs = folder(e.work / "imgs", 12)
    r1 = e.run(["extract", imgs, "--out", "cache", "--backbone", TINY, "--workers", "0", "--shard-size", "8",
                "--batch-size", "8", *FAST], timeout=300)
    r2 = e.run(["train", "cache", "--out", "det", "--epochs", "2", "--batch-size", "8", "--no-sam", *FAST],
               timeout=300)
    assert r1["rc"] == 0 and r2["rc"] == 0, (r1, r2)


def attack_tmp_symlink(e: Env):
    """Symlinks planted under predict's temporary name (pid known: the child exec()s in place)."""
    d = e.work / "shared_out"
    d.mkdir()
    victim = e.work / "victim.txt"
    victim.write_text("precious\n")
    plant = ("import os,sys; d=sys.argv.pop(1); v=sys.argv.pop(1); "
             "[os.symlink(v, os.path.join(d, n)) for n in ('.p.csv.tmp-%d' % os.getpid(),)]; "
             "os.execv(sys.executable, [sys.executable, '-m', 'clipdetect'] + sys.argv[1:])")
    r = e.run(["predict", "det", e.work / "imgs" / "real", "--out", d / "p.csv", "--workers", "0", *FAST],
              pre=["-c", plant, str(d), str(victim)])
    r["victim_changed"] = victim.read_text() != "precious\n"
    r["victim_now_starts"] = victim.read_text()[:40]
    # the final name a symlink too
    victim.write_text("precious\n")
    os.symlink(victim, d / "q.csv")
    r2 = e.run(["predict", "det", e.work / "imgs" / "real", "--out", d / "q.csv", "--workers", "0", *FAST])
    r["final_name_symlink"] = {"rc": r2["rc"], "victim_changed": victim.read_text() != "precious\n"}
    return r


def attack_dev_zero(e: Env):
    d = e.work / "zero"
    (d / "real").mkdir(parents=True)
    os.symlink("/dev/zero", d / "real" / "endless.jpg")
    image(1, False).save(d / "real" / "ok.png")
    return e.run(["predict", "det", d, "--out", "z.csv", "--workers", "0", *FAST])


def attack_big_file(e: Env):
    d = e.work / "big"
    (d / "real").mkdir(parents=True)
    with open(d / "real" / "huge.png", "wb") as f:  # sparse: 2 GB claimed, nothing on disk
        f.truncate(2 * 2**30)
    image(1, False).save(d / "real" / "ok.png")
    return e.run(["predict", "det", d / "real", "--out", "big.csv", "--workers", "0", *FAST])


def attack_fifo(e: Env):
    out = {}
    d = folder(e.work / "fifo", 2)
    os.mkfifo(d / "real" / "x.jpg")
    for w in ("0", "1"):
        out[f"extract_workers_{w}"] = e.run(["extract", d, "--out", f"fifo_cache{w}", "--backbone", TINY,
                                              "--workers", w, *FAST])
    out["predict"] = e.run(["predict", "det", d, "--out", "fifo.csv", "--workers", "0", *FAST])
    return out


def attack_sigterm(e: Env):
    out = {}
    many = folder(e.work / "many", 150)
    synth = e.work / "syncache"
    shutil.copytree(e.work / "cache", synth)
    t = e.work / "t_out"
    t.mkdir()

    def logged():
        return any(p.name.startswith(".det.tmp-") for p in t.iterdir())
    out["train"] = e.run(["train", synth, "--out", t / "det", "--epochs", "100000", "--patience", "0",
                          "--batch-size", "8", *FAST], ready=logged, send=signal.SIGTERM)
    out["train"]["debris"] = [p.name for p in t.iterdir()]
    p = e.work / "p_out"
    p.mkdir()
    out["predict"] = e.run(["predict", "det", many, "--out", p / "p.csv", "--workers", "2", "--batch-size", "2",
                            *FAST], ready=lambda: any(".p.csv.tmp" in q.name for q in p.iterdir()),
                           send=signal.SIGTERM)
    out["predict"]["debris"] = [q.name for q in p.iterdir()]
    c = e.work / "x_cache"

    def shard():
        try:
            return len(json.loads((c / "manifest.json").read_text())["shards"]) >= 1
        except (OSError, ValueError, KeyError):
            return False
    out["extract_workers_2"] = e.run(["extract", many, "--out", c, "--backbone", TINY, "--workers", "2",
                                      "--shard-size", "8", "--batch-size", "4", *FAST], ready=shard,
                                     send=signal.SIGTERM)
    out["extract_workers_2"]["debris"] = temp_debris(c)
    return out


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def attack_injection(e: Env):
    d = e.work / "inj"
    (d / "real").mkdir(parents=True)
    (d / "fake").mkdir(parents=True)
    names = ["=HYPERLINK(\"https:x\",\"a\").png", "+1+2.png", "-3+4.png", "@SUM(1).png", "\tx.png"]
    for i, n in enumerate(names):
        image(i, False).save(d / "real" / n)
        image(i, True).save(d / "fake" / f"{i}.png")
    manifest = e.work / "inj.csv"
    rows = [{"path": str(d / "real" / n), "label": 0, "key": n, "generator": "real"} for n in names]
    rows += [{"path": str(d / "fake" / f"{i}.png"), "label": 1, "key": f"f{i}",
              "generator": "=CMD()<img src=x onerror=alert(1)>[a](javascript:alert(1))"} for i in range(5)]
    import csv
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "key", "generator"])
        w.writeheader()
        w.writerows(rows)
    e.run(["extract", manifest, "--out", "inj_cache", "--backbone", TINY, "--workers", "0", *FAST])
    r = e.run(["predict", "det", manifest, "--out", "inj_pred.csv", "--workers", "0", *FAST])
    r2 = e.run(["evaluate", "det", "inj_cache", "--split", "all", "--n-boot", "0", "--baseline", "none",
                "--out", "inj_eval", "--save-scores"])
    risky = ("=", "+", "-", "@", "\t")

    def cells(path):
        import csv as _csv
        try:
            with open(path, newline="") as f:
                return [c for row in _csv.reader(f) for c in row if c.startswith(risky) and not _number(c)]
        except OSError:
            return None
    md = (e.work / "inj_eval" / "metrics.md")
    return {"predict_rc": r["rc"], "evaluate_rc": r2["rc"],
            "formula_cells": {"predict.csv": cells(e.work / "inj_pred.csv"),
                              "scores.csv": cells(e.work / "inj_eval" / "scores.csv"),
                              "metrics.csv": cells(e.work / "inj_eval" / "metrics.csv")},
            "metrics_md_raw_html": ("<img" in md.read_text()) if md.exists() else None,
            "metrics_md_js_link": bool(re.search(r"(?<!\\)\]\(javascript:", md.read_text())) if md.exists() else None}


def attack_traversal(e: Env):
    """A shard named ../../outside/evil: CACHE/img_emb/../../outside/evil.npy lies outside the cache;
    meta and the error ledger then share outside/evil.parquet, which holds both tables' columns."""
    import pandas as pd

    c = e.work / "trav" / "cache"
    shutil.copytree(e.work / "cache", c)
    m = json.loads((c / "manifest.json").read_text())
    s = m["shards"][0]
    outside = e.work / "trav" / "outside"  # CACHE/img_emb/../../outside
    outside.mkdir()
    shutil.copy(c / "img_emb" / f"{s['name']}.npy", outside / "evil.npy")
    meta = pd.read_parquet(c / "meta" / f"{s['name']}.parquet").assign(reason="x", detail="")
    meta.to_parquet(outside / "evil.parquet", index=False)
    s["name"], s["errors"] = "../../outside/evil", len(meta)
    (c / "manifest.json").write_text(json.dumps(m))
    out = {"verify": e.run(["cache", "verify", c]),
           "train": e.run(["train", c, "--out", e.work / "trav" / "det", "--epochs", "1", "--no-sam", *FAST])}
    s["name"] = str(outside / "evil")
    (c / "manifest.json").write_text(json.dumps(m))
    out["absolute_verify"] = e.run(["cache", "verify", c])
    out["absolute_train"] = e.run(["train", c, "--out", e.work / "trav" / "det2", "--epochs", "1", "--no-sam",
                                   *FAST])
    return out


def _bundle(e: Env, name: str, edit_json=None, edit_tensors=None) -> Path:
    from safetensors.numpy import load_file, save_file

    d = e.work / "bundles" / name
    shutil.copytree(e.work / "det", d)
    if edit_json:
        cfg = json.loads((d / "detector.json").read_text())
        cfg = edit_json(cfg)
        (d / "detector.json").write_text(json.dumps(cfg))
    if edit_tensors:
        t = load_file(str(d / "model.safetensors"))
        save_file(edit_tensors(t), str(d / "model.safetensors"))
    return d


def attack_nan_weights(e: Env):
    def nan(t):
        for k, v in t.items():
            if v.dtype.kind == "f":
                t[k] = np.full_like(v, np.nan)
        return t
    d = _bundle(e, "nan", edit_tensors=nan)
    r = e.run(["predict", d, e.work / "imgs", "--out", "nan.csv", "--workers", "0", *FAST])
    try:
        import pandas as pd
        df = pd.read_csv(e.work / "nan.csv")
        r["scores_nan"] = int(df["score"].isna().sum())
        r["labelled_real"] = int((df["label"] == 0).sum())
        r["rows"] = len(df)
    except Exception as exc:
        r["csv"] = f"none ({type(exc).__name__})"
    return r


def attack_reextract(e: Env):
    c = e.work / "re_cache"
    rows = []
    base = ["extract", e.work / "imgs", "--out", c, "--backbone", TINY, "--workers", "0", *FAST]
    out = {}
    for i, extra in enumerate([["--shard-size", "8"], ["--shard-size", "5"], ["--text", "no"]]):
        r = e.run(base + extra)
        try:
            m = json.loads((c / "manifest.json").read_text())
            rows.append(sum(s["rows"] for s in m["shards"]))
        except (OSError, ValueError):
            rows.append(None)
        out[f"run{i}"] = {"rc": r["rc"], "last_line": r["last_line"]}
    out["rows_after_each"] = rows
    out["verify"] = e.run(["cache", "verify", c])
    out["train"] = e.run(["train", c, "--out", e.work / "re_det", "--epochs", "1", "--no-sam", *FAST])
    return out


def attack_bundle_sizes(e: Env):
    out = {}
    for name, edit in [("depth_200000", lambda c: {**c, "head_config": {**c["head_config"], "depth": 200000}}),
                       ("width_120000", lambda c: {**c, "head_config": {**c["head_config"], "width": 120000}}),
                       ("svd_rank_1e9", lambda c: {**c, "extra": {**(c.get("extra") or {}),
                                                                  "compression": {"svd": {"body.0": 10**9}}}})]:
        d = _bundle(e, name, edit_json=edit)
        out[name] = e.run(["predict", d, e.work / "imgs" / "real", "--out", f"{name}.csv", "--workers", "0", *FAST])
        out[name]["bundle_json_bytes"] = (d / "detector.json").stat().st_size
    return out


def attack_json_types(e: Env):
    out = {}
    cases = {"threshold_null": lambda c: {**c, "threshold": None},
             "threshold_string": lambda c: {**c, "threshold": "0.5"},
             "version_string": lambda c: {**c, "version": "2"},
             "whole_file_list": lambda c: [c],
             "no_head_config": lambda c: {k: v for k, v in c.items() if k != "head_config"},
             "temperature_inf": lambda c: {**c, "temperature": 1e308},
             "temperature_tiny": lambda c: {**c, "temperature": 5e-324}}
    for name, edit in cases.items():
        d = _bundle(e, name, edit_json=edit)
        r = e.run(["predict", d, e.work / "imgs", "--out", f"{name}.csv", "--workers", "0", *FAST])
        try:
            import pandas as pd
            df = pd.read_csv(e.work / f"{name}.csv")
            r["distinct_probabilities"] = sorted(set(df["probability"].round(6)))[:4]
        except Exception:
            pass
        out[name] = {k: r[k] for k in ("rc", "traceback", "last_line", "distinct_probabilities") if k in r}
    d = _bundle(e, "int64", edit_tensors=lambda t: {k: (v * 1000).astype(np.int64) if v.dtype.kind == "f" else v
                                                    for k, v in t.items()})
    r = e.run(["predict", d, e.work / "imgs", "--out", "int64.csv", "--workers", "0", *FAST])
    out["int64_tensors"] = {k: r[k] for k in ("rc", "traceback", "last_line")}
    for name, edit in {"shards_5": lambda m: {**m, "shards": 5}, "dtype_bogus": lambda m: {**m, "dtype": "qint3"}}.items():
        c = e.work / "bad_manifest" / name
        shutil.copytree(e.work / "cache", c)
        m = json.loads((c / "manifest.json").read_text())
        (c / "manifest.json").write_text(json.dumps(edit(m)))
        r = e.run(["train", c, "--out", e.work / "bad_manifest" / f"{name}_det", "--epochs", "1", *FAST])
        out[f"cache_{name}"] = {k: r[k] for k in ("rc", "traceback", "last_line")}
    return out


def attack_small(e: Env):
    out = {}
    code = ("import sys, clipdetect; from PIL import Image; import io; det = clipdetect.Detector.load('det'); "
            "b = io.BytesIO(); Image.new('RGB', (32, 32)).save(b, 'PNG'); "
            "df = det.score_images(memoryview(b.getvalue())); print('ROWS', len(df))")
    p = subprocess.run([sys.executable, "-c", code], cwd=e.work, env=e.env(), capture_output=True, text=True,
                       timeout=2 * e.timeout)
    rows = [line for line in p.stdout.splitlines() if line.startswith("ROWS")]
    out["memoryview_rows"] = rows[0] if rows else (p.stderr.strip().splitlines() or ["?"])[-1][:200]
    m = e.work / "m.csv"
    import csv
    with open(m, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for q in sorted((e.work / "imgs").rglob("*.png")):
            w.writerow([str(q), 1 if q.parent.name == "fake" else 0])
    before = m.read_text()
    r = e.run(["predict", "det", m, "--out", m, "--workers", "0", *FAST])
    out["predict_over_own_manifest"] = {"rc": r["rc"], "manifest_overwritten": m.read_text() != before,
                                        "last_line": r["last_line"]}
    n = 100_000
    miss = e.work / "missing.csv"
    with open(miss, "w") as f:
        f.write("path,label\n")
        for i in range(n):
            f.write(f"/nonexistent/{i}.png,{i % 2}\n")
    r = e.run(["extract", miss, "--out", "miss_cache", "--backbone", TINY, "--workers", "0", *FAST], timeout=600)
    out[f"manifest_of_{n}_missing"] = {k: r[k] for k in ("rc", "seconds", "last_line")}
    return out


ATTACKS = {"tmp_symlink": attack_tmp_symlink, "dev_zero": attack_dev_zero, "big_file": attack_big_file,
           "fifo": attack_fifo, "sigterm": attack_sigterm, "injection": attack_injection,
           "traversal": attack_traversal, "nan_weights": attack_nan_weights, "reextract": attack_reextract,
           "bundle_sizes": attack_bundle_sizes, "json_types": attack_json_types, "small": attack_small}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", required=True, help="checkout whose clipdetect package to attack")
    ap.add_argument("--out", required=True, help="results JSON")
    ap.add_argument("--only", help="comma-separated attacks (default all): " + ",".join(ATTACKS))
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per child (default 60)")
    ap.add_argument("--memory-gb", type=float, default=6.0, help="address-space limit per child (default 6)")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(ATTACKS)
    results = {"code": str(Path(args.code).resolve())}
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        e = Env(Path(args.code), Path(tmp), args.timeout, args.memory_gb)
        setup(e)
        for name in names:
            t0 = time.monotonic()
            try:
                results[name] = ATTACKS[name](e)
            except Exception as exc:  # an attack that breaks the harness is a result too
                results[name] = {"harness_error": f"{type(exc).__name__}: {exc}"}
            print(f"{name}: {time.monotonic() - t0:.1f}s", file=sys.stderr)
            save_json(args.out, results)
    print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
