"""The image's build context and stages, checked without a Docker engine.

deploy/Dockerfile names the workspace members by hand: stage 1 copies their manifests and
stubs their sources so cargo can load the workspace and build the dependencies, stage 2
swaps the stubs for the real sources. A member added to the workspace but not to those
lists breaks `docker build` (cargo cannot load the workspace), and nothing here runs
Docker. So this script replays the two stages on a temporary tree, the way BuildKit would
with deploy/Dockerfile.dockerignore as the context filter, and checks:

1. every COPY source survives the .dockerignore filter;
2. `cargo metadata --locked --offline` loads the workspace from what stage 1 copies;
3. after stage 2, every source file of the packages the image builds (the binaries' crates
   and every workspace crate they depend on) is present.

usage: python3 image_context.py REPO_ROOT   (prints each problem and a summary line;
exit 1 on any problem)
"""

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(sys.argv[1]).resolve()
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
IGNORE = ROOT / "deploy" / "Dockerfile.dockerignore"
# The packages `cargo build` in stage 2 names.
IMAGE_PACKAGES = {"ryze-gateway-cmd", "ryze-publisher"}


def ignore_patterns() -> list[tuple[bool, list[str]]]:
    """(is an exception, pattern components) per line, in order."""
    out = []
    for line in IGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        out.append((keep, line.lstrip("!").strip("/").split("/")))
    return out


def match_parts(pat: list[str], parts: list[str]) -> bool:
    if not pat:
        return not parts
    if pat[0] == "**":
        return any(match_parts(pat[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pat[0]) and match_parts(pat[1:], parts[1:])


def in_context(rel: str, patterns) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.split("/")
    included = True
    for keep, pat in patterns:
        if any(match_parts(pat, parts[:k]) for k in range(1, len(parts) + 1)):
            included = keep
    return included


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split by FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        elif out:
            out[-1].append(line)
    return out


def copies(stage: list[str]) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not --from a stage)."""
    out = []
    for line in stage:
        words = line.split()
        if words[0].upper() != "COPY" or any(w.startswith("--from") for w in words):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        out.append((args[:-1], args[-1]))
    return out


def copy_in(tree: Path, sources: list[str], dest: str, patterns, failures: list[str]):
    for src in sources:
        if not in_context(src, patterns):
            failures.append(f"COPY {src}: excluded by {IGNORE.name}")
            continue
        origin = ROOT / src
        target = tree / dest / (origin.name if dest.endswith("/") else "")
        if origin.is_dir():
            for path in origin.rglob("*"):
                rel = path.relative_to(ROOT).as_posix()
                if path.is_file() and in_context(rel, patterns):
                    to = target / path.relative_to(origin)
                    to.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, to)
        elif origin.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
        else:
            failures.append(f"COPY {src}: no such file in the repository")


def stub(tree: Path, stage: list[str]):
    """Stage 1's stub loop: src/lib.rs, src/main.rs and every `path = "....rs"` target."""
    loop = next(line for line in stage if "for member in" in line)
    members = re.search(r"for member in ([^;]+);", loop).group(1).split()
    for member in members:
        root = tree / member
        (root / "src").mkdir(parents=True, exist_ok=True)
        (root / "src" / "lib.rs").write_text("\n")
        (root / "src" / "main.rs").write_text("fn main() {}\n")
        manifest = root / "Cargo.toml"
        targets = re.findall(r'^\s*path\s*=\s*"([^"]*\.rs)"', manifest.read_text(), re.M) if manifest.exists() else []
        for target in targets:
            (root / target).parent.mkdir(parents=True, exist_ok=True)
            (root / target).write_text("fn main() {}\n")


def cargo_metadata(cwd: Path, env=None) -> subprocess.CompletedProcess:
    """`cargo metadata` of the workspace at `cwd`, from the lockfile and the local registry."""
    return subprocess.run(
        ["cargo", "metadata", "--locked", "--offline", "--format-version", "1"],
        cwd=cwd, env=env, capture_output=True, text=True)


def image_crate_dirs() -> set[Path]:
    """Directories of the image's packages and of every workspace crate they depend on."""
    result = cargo_metadata(ROOT)
    result.check_returncode()
    meta = json.loads(result.stdout)
    members = set(meta["workspace_members"])
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    packages = {p["id"]: p for p in meta["packages"]}
    todo = [i for i in members if packages[i]["name"] in IMAGE_PACKAGES]
    seen: set[str] = set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in members:
            continue
        seen.add(pid)
        todo.extend(d["pkg"] for d in nodes[pid]["deps"]
                    if any(k["kind"] is None for k in d["dep_kinds"]))
    return {Path(packages[i]["manifest_path"]).parent for i in seen}


def main() -> int:
    patterns = ignore_patterns()
    deps, build, *_ = stages()
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="image-context.") as tmp:
        tree = Path(tmp)
        for sources, dest in copies(deps):
            copy_in(tree, sources, dest, patterns, failures)
        stub(tree, deps)
        loaded = cargo_metadata(tree, {**os.environ, "CARGO_TARGET_DIR": str(tree / "target")})
        if loaded.returncode != 0:
            failures.append("stage 1: cargo cannot load the workspace:\n" + loaded.stderr.strip())
        # Stage 2: the stub sources of the listed directories go, the real ones come.
        find = next(line for line in build if "-delete" in line)
        for d in re.search(r"find ((?:[\w/.-]+ )+)-name", find).group(1).split():
            for path in (tree / d).rglob("*.rs"):
                path.unlink()
        for sources, dest in copies(build):
            copy_in(tree, sources, dest, patterns, failures)
        for crate in sorted(image_crate_dirs()):
            for path in crate.rglob("*.rs"):
                rel = path.relative_to(ROOT)
                if "target" in rel.parts:
                    continue
                built = tree / rel
                if not built.exists() or built.read_bytes() != path.read_bytes():
                    failures.append(f"stage 2: {rel} is not in the image's sources")
    for failure in failures:
        print(failure)
    print("image context: " + ("ok" if not failures else f"{len(failures)} problem(s)"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
