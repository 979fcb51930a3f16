#!/usr/bin/env python3
"""Where the .text of a linked image comes from, by ccdma/ffi source file or feature group.

    python3 scripts/text-by-source.py IMAGE.elf [--by file|group|line] [--top N] [--fn SUBSTRING]

IMAGE must carry line tables. Built as scripts/budgets.sh builds its "full" image, with them:

    (cd ffi && CARGO_TARGET_DIR=../target/text-by-source CARGO_PROFILE_FIRMWARE_DEBUG=line-tables-only \\
        cargo +nightly rustc --profile firmware --target x86_64-unknown-none --no-default-features \\
        --features panic-handler,full --crate-type staticlib)
    then ld -static -nostdlib --gc-sections --no-undefined -e 0 --require-defined=<each ccdma_ export>

(line tables do not change the code: the same .text as budgets.sh's image). Every byte of every
function is given to the innermost frame of its inline chain (addr2line -i) that lies in guest/src or
ffi/src, so core's and spin's inlined helpers count for the ccdma code that used them. --fn prints,
for the functions whose name holds SUBSTRING, their bytes by inlined ccdma function and file.
Issue 20 (text2 helper): the table in its report came from --by group.
"""
import argparse
import bisect
import collections
import re
import subprocess

GROUPS = [
    ("scatter-gather (guest/src/sg)", r"^guest/sg/"),
    ("growth (guest/src/growth)", r"^guest/growth/"),
    ("IOMMU (guest/src/iommu)", r"^guest/iommu/"),
    ("pool allocator (guest/src/pool)", r"^guest/pool/"),
    ("stream: strict and trusted maps", r"^guest/stream/(strict|trusted)\.rs"),
    ("stream: raw records and claims", r"^guest/stream/raw_"),
    ("stream: route, bounce, record, placement", r"^guest/stream/"),
    ("coherent buffers (coherent.rs)", r"^guest/coherent"),
    ("trusted devices (accept.rs, trust.rs)", r"^guest/(accept|trust)\.rs"),
    ("stats (stats.rs)", r"^guest/stats"),
    ("layer core (layer, init, pool_set, device, path, addr, ...)", r"^guest/"),
    ("ffi shims and the C platform (ffi/src)", r"^ffi/"),
    ("core, spin, compiler_builtins outside any ccdma frame", r"."),
]


def short(loc):
    loc = re.sub(r" \(discriminator.*", "", loc)
    loc = re.sub(r".*/(guest|ffi)/src/", r"\1/", loc)
    return re.sub(r".*/library/", "std:", loc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("elf")
    ap.add_argument("--by", choices=["file", "group", "line"], default="group")
    ap.add_argument("--top", type=int, default=60)
    ap.add_argument("--fn")
    a = ap.parse_args()
    dump = subprocess.run(["objdump", "--dwarf=decodedline", a.elf], capture_output=True, text=True).stdout
    starts = {int(m.group(1), 16) for m in re.finditer(r"^\S+\s+\d+\s+(0x[0-9a-f]+)", dump, re.M)}
    syms = []
    for line in subprocess.run(["nm", "-S", "-C", a.elf], capture_output=True, text=True).stdout.splitlines():
        p = line.split(" ", 3)
        if len(p) == 4 and p[2] in "tTWw":
            syms.append((int(p[0], 16), int(p[1], 16), p[3]))
            starts.add(int(p[0], 16))
    starts = sorted(starts)
    out = subprocess.run(["addr2line", "-i", "-a", "-f", "-C", "-e", a.elf],
                         input="".join(f"{x:#x}\n" for x in starts), capture_output=True, text=True).stdout.splitlines()
    chains, cur, i = {}, None, 0
    while i < len(out):
        if out[i].startswith("0x"):
            cur = int(out[i], 16)
            chains[cur] = []
            i += 1
        else:
            chains[cur].append((out[i], out[i + 1]))
            i += 2

    def owner(addr):
        chain = chains.get(addr, [])
        for fn, loc in chain:
            if "/guest/src/" in loc or "/ffi/src/" in loc:
                return fn, short(loc)
        return (chain[0][0], short(chain[0][1])) if chain else ("?", "?")

    tot = collections.Counter()
    for base, size, name in syms:
        j = bisect.bisect_left(starts, base)
        while j < len(starts) and starts[j] < base + size:
            end = min(starts[j + 1] if j + 1 < len(starts) else base + size, base + size)
            fn, loc = owner(starts[j])
            f = loc.split(":")[0]
            if a.by == "line":
                key = loc
            elif a.by == "file":
                key = f
            else:
                key = next(g for g, pat in GROUPS if re.search(pat, f))
            tot[key] += end - starts[j]
            if a.fn and a.fn in name:
                tot[("fn", name, f"{fn[:60]} @{f}")] += end - starts[j]
            j += 1
    keys = [k for k in tot if not isinstance(k, tuple)]
    if a.by == "group":
        for g, _ in GROUPS:
            print(f"{tot[g]:8d}  {g}")
    else:
        for k in sorted(keys, key=lambda k: -tot[k])[: a.top]:
            print(f"{tot[k]:8d}  {k}")
    print(f"{sum(tot[k] for k in keys):8d}  total")
    per = collections.defaultdict(list)
    for k, v in tot.items():
        if isinstance(k, tuple):
            per[k[1]].append((v, k[2]))
    for name, rows in per.items():
        print(f"== {name}")
        for v, k in sorted(rows, reverse=True)[:30]:
            print(f"  {v:6d}  {k}")


if __name__ == "__main__":
    main()
