"""Vendors ReDoc's standalone bundle from the npm `redoc` package into service/static/redoc/, for `/redoc`.

`python scripts/vendor_redoc.py` fetches the pinned version with `npm pack`, checks the tarball against the
registry's recorded sha512, and writes the bundle and its licence files; `--check` does the same into a temporary
directory and exits 1 when the committed files differ. The service serves these files itself: no CDN at run time.

Why vendored, not a PyPI dependency: every PyPI package that ships this bundle (drf-spectacular-sidecar,
fastapi-standalone-docs, star-openapi-redoc) depends on a web framework (Django, FastAPI, star-openapi) the
service has no use for. Why 2.x: it is the line FastAPI's `/redoc` page loads (`redoc@2`), and 3.x bundles
telemetry.
"""

from __future__ import annotations

import argparse
import base64
import filecmp
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "service" / "static" / "redoc"
VERSION = "2.5.4"
# `npm view redoc@2.5.4 dist.integrity`
INTEGRITY = "sha512-M6jWhG1qoBnH6TFmzJnstyCZ87HmOY/UzDm78mHiYihEdlV/YcS9ogOo1NlElnJMeLsyxHFe2yFc4sNjHTrABQ=="
# Tarball member -> vendored name. The source map (4 MB) stays out: browsers only ask for it with devtools open.
FILES = {
    "package/bundles/redoc.standalone.js": "redoc.standalone.js",
    "package/bundles/redoc.standalone.js.LICENSE.txt": "redoc.standalone.js.LICENSE.txt",
    "package/LICENSE": "LICENSE",
}


def vendor(target: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is needed to fetch the redoc package (apt-get install npm)")
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(
            [npm, "pack", f"redoc@{VERSION}", "--pack-destination", work, "--silent"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tarball = next(Path(work).glob("redoc-*.tgz"))
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if digest != INTEGRITY:
            raise SystemExit(f"redoc@{VERSION} does not match its recorded integrity: {digest}")
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as archive:
            for member, name in FILES.items():
                source = archive.extractfile(member)
                if source is None:
                    raise SystemExit(f"{member} is missing from redoc@{VERSION}")
                (target / name).write_bytes(source.read())
    (target / "VERSION").write_text(f"redoc@{VERSION} {INTEGRITY}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the committed files differ")
    args = parser.parse_args()
    if not args.check:
        vendor(TARGET)
        return 0
    with tempfile.TemporaryDirectory() as fresh:
        vendor(Path(fresh))
        names = [*FILES.values(), "VERSION"]
        _, mismatch, errors = filecmp.cmpfiles(TARGET, fresh, names, shallow=False)
        if mismatch or errors:
            print(f"service/static/redoc differs from redoc@{VERSION}: {mismatch + errors}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
