"""Reading multispectral data: images per second for 13-band 64 x 64 int16 GeoTIFFs, step by step
(scanning the folder with every file's content hash, decoding the bands into one tensor, writing
the decode cache) and as a whole: a cold load (all three) and a warm one (served by the cache).

    python benchmarks/decode_bands.py                   # 10,000 images in a temporary folder
    python benchmarks/decode_bands.py --images 2000 --json benchmarks/results/cpu-decode-bands.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()

    from stpcli.data import imagefolder
    from stpcli.data.bands import Decoding
    from stpcli.data.multispectral import write_example
    from stpcli.data.source import load_dataset, write_cache_file

    with tempfile.TemporaryDirectory(prefix="stp-bands-") as folder:
        root, cache = Path(folder) / "scenes", Path(folder) / "cache"
        started = time.perf_counter()
        write_example(root, per_class=options.images // 4, seed=0)
        written = time.perf_counter() - started
        rows = []

        def timed(label, call):
            started = time.perf_counter()
            result = call()
            seconds = time.perf_counter() - started
            rows.append({"step": label, "images": options.images, "seconds": seconds,
                         "images_per_s": options.images / seconds})
            return result

        listing = timed("scan (content hashes)", lambda: imagefolder.scan(root))
        images, labels, *_ = timed("decode bands", lambda: imagefolder.decode_all(listing, 64, "fail",
                                                                                  decoding=Decoding("bands")))
        cache.mkdir()
        timed("write a cache file", lambda: write_cache_file({"images": images, "labels": labels}, {},
                                                             cache / "probe.safetensors"))
        for label in ("load, cold (all three)", "load, warm (the cache)"):
            started = time.perf_counter()
            data = load_dataset(str(root), 64, cache_dir=cache)
            seconds = time.perf_counter() - started
            rows.append({"step": label, "images": len(data.names), "seconds": seconds,
                         "images_per_s": len(data.names) / seconds})
        shape, dtype = tuple(data.images.shape[1:]), str(data.images.dtype)
    print(f"{options.images} images of {shape} {dtype} (13-band GeoTIFF, written in {written:.1f} s), "
          f"{os.cpu_count()} CPU cores")
    for row in rows:
        print(f"{row['step']:<22} {row['seconds']:>7.2f} s {row['images_per_s']:>9.0f} images/s")
    if options.json:
        options.json.write_text(json.dumps({"images": options.images, "shape": shape, "dtype": dtype,
                                            "cores": os.cpu_count(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
