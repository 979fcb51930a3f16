#!/usr/bin/env python3
"""Code, stack and panic figures of a freestanding link of ccdma's C staticlib.

    python3 scripts/budgets.py ELF [--entries a,b,c] [--top N]

ELF is a static link (`ld --gc-sections`) of `libccdma_ffi.a` built for `x86_64-unknown-none` with
`-Z emit-stack-sizes`, its `.stack_sizes` section kept by `scripts/budgets.ld` (scripts/budgets.sh
does all of that). Prints, one `key value` per line then tables:

- text: bytes of `.text`;
- functions / panicking: functions in the image, and how many of them can reach the panic handler
  (`rust_begin_unwind`) through direct calls and jumps (objdump's call graph);
- the largest frames (from `.stack_sizes`: LLVM's own figure per function);
- per entry point, the deepest chain of frames through direct calls (indirect calls cannot be
  followed and are counted, except those named with --indirect; a cycle is cut at its back edge
  and reported).

Exit status 0; judging the figures against budgets is scripts/budgets.sh's job.
"""

import argparse
import re
import subprocess
import sys
from collections import defaultdict

PANIC_ROOT = "rust_begin_unwind"


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def demangle(names):
    """Demangle many symbols with one c++filt (which knows Rust's v0 scheme)."""
    if not names:
        return {}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


def short(name, width=110):
    # Drop crate hashes ([1a2b3c..]) and keep the tail, which says what the function is.
    name = re.sub(r"\[[0-9a-f]{6,}\]", "", name)
    return name if len(name) <= width else "..." + name[-(width - 3):]


def section_bytes(elf, name):
    """(start address, bytes) of a section, from objdump's hex dump."""
    out = run("objdump", "-s", "-j", name, elf)
    data, start = bytearray(), None
    for line in out.splitlines():
        m = re.match(r"^ ([0-9a-f]+) ((?:[0-9a-f]{2,8} ?){1,4})", line)
        if m:
            if start is None:
                start = int(m.group(1), 16)
            for word in m.group(2).split():
                data += bytes.fromhex(word)
    return start or 0, bytes(data)


def stack_size_pairs(data, endian="<"):
    """{address: frame bytes} from a .stack_sizes section's bytes: (u64 address, ULEB128 size)
    pairs (scripts/kernel_budgets.py reads its big-endian kernels with this too)."""
    sizes, i = {}, 0
    while i + 8 <= len(data):
        addr = int.from_bytes(data[i:i + 8], "little" if endian == "<" else "big")
        i += 8
        size, shift = 0, 0
        while i < len(data):
            b = data[i]
            i += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        sizes[addr] = size
    return sizes


def stack_sizes(elf):
    """{address: frame bytes} of the image's .stack_sizes section."""
    try:
        _, data = section_bytes(elf, ".stack_sizes")
    except subprocess.CalledProcessError:
        return {}
    return stack_size_pairs(data)


def functions(elf):
    """{name: (address, size)} of the image's function symbols."""
    funcs = {}
    for line in run("nm", "-S", "--defined-only", elf).splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "TtWw":
            funcs[parts[3]] = (int(parts[0], 16), int(parts[1], 16))
    return funcs


def call_graph(elf, by_addr):
    """({caller: {callee}}, {caller: indirect call count}) from the disassembly.

    The target's code is position independent: calls to other functions go through the GOT
    (`call *off(%rip)  # <got slot>`), so a call through a GOT slot is resolved by reading the slot.
    """
    graph, indirect = defaultdict(set), defaultdict(int)
    try:
        got_start, got = section_bytes(elf, ".got")
    except subprocess.CalledProcessError:
        got_start, got = 0, b""
    current = None
    for line in run("objdump", "-d", "--no-show-raw-insn", elf).splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            current = m.group(1)
            graph[current]
            continue
        if current is None:
            continue
        m = re.search(r"\t(call|jmp|j[a-z]+)\s+[0-9a-f]+ <([^>+]+)>$", line)
        if m and m.group(2) != current:
            graph[current].add(m.group(2))
            continue
        m = re.search(r"\t(call|jmp)\s+\*0x[0-9a-f]+\(%rip\)\s+# ([0-9a-f]+)", line)
        if m:
            off = int(m.group(2), 16) - got_start
            if 0 <= off and off + 8 <= len(got):
                target = by_addr.get(int.from_bytes(got[off:off + 8], "little"))
                if target:
                    graph[current].add(target)
                    continue
        if re.search(r"\t(call|jmp)\s+\*", line):
            indirect[current] += 1
    return graph, indirect


def reaching(graph, root_pred):
    """Every function that reaches a function matching root_pred (itself included)."""
    callers = defaultdict(set)
    for f, callees in graph.items():
        for c in callees:
            callers[c].add(f)
    todo = [f for f in graph if root_pred(f)]
    seen = set(todo)
    while todo:
        f = todo.pop()
        for c in callers[f]:
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return seen


def deepest(graph, frame, entry):
    """(bytes, chain, cut cycles, unknown frames) of the deepest chain from entry."""
    memo, cycles, unknown = {}, set(), set()

    def walk(f, stack):
        if f in memo:
            return memo[f]
        if f in stack:
            cycles.add(f)
            return (0, [])
        stack.add(f)
        if f not in frame:
            unknown.add(f)
        best = (0, [])
        for c in graph.get(f, ()):
            got = walk(c, stack)
            if got[0] > best[0]:
                best = got
        stack.discard(f)
        memo[f] = (frame.get(f, 0) + best[0], [f] + best[1])
        return memo[f]

    sys.setrecursionlimit(100000)
    total, chain = walk(entry, set())
    return total, chain, cycles, unknown


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("elf")
    ap.add_argument("--entries", default="", help="comma-separated entry points for the chain table")
    ap.add_argument("--top", type=int, default=8, help="rows of the largest-frames table")
    ap.add_argument("--list-panicking", action="store_true", help="name every function that can panic")
    ap.add_argument("--indirect", action="append", default=[], metavar="FROM>TO",
                    help="an indirect call the chains follow: every function whose demangled name holds FROM "
                         "may call every one whose name holds TO (repeatable)")
    args = ap.parse_args()

    funcs = functions(args.elf)
    by_addr = {addr: name for name, (addr, _) in funcs.items()}
    frame = {by_addr[a]: s for a, s in stack_sizes(args.elf).items() if a in by_addr}
    graph, indirect = call_graph(args.elf, by_addr)
    names = demangle(sorted(set(funcs) | set(graph)))
    # Indirect calls known by construction (a table of functions the code calls through): the chains
    # follow them, the panic count needs no hint (it looks at every function in the image).
    for pair in args.indirect:
        src, _, dst = pair.partition(">")
        callees = {f for f in graph if dst in names.get(f, f)}
        for f in list(graph):
            if src in names.get(f, f):
                graph[f] |= callees - {f}

    text = 0
    for line in run("size", "-A", args.elf).splitlines():
        parts = line.split()
        if parts and parts[0] == ".text":
            text = int(parts[1])
    panicking = reaching(graph, lambda f: names.get(f, f).endswith(PANIC_ROOT))
    print(f"text {text}")
    print(f"functions {len(graph)}")
    print(f"panicking {len(panicking)}")
    print(f"indirect_calls {sum(indirect.values())}")
    print(f"max_frame {max(frame.values(), default=0)}")

    entries = [e for e in args.entries.split(",") if e]
    worst = 0
    rows = []
    for e in entries:
        if e not in graph:
            rows.append(f"  {e:<28} not in the image")
            continue
        total, chain, cycles, unknown = deepest(graph, frame, e)
        worst = max(worst, total)
        print(f"chain_{e} {total}")
        note = f"  {len(cycles)} cycle(s) cut" if cycles else ""
        via = " > ".join(short(names.get(f, f), 40) for f in chain[:6]) + (" > ..." if len(chain) > 6 else "")
        rows.append(f"  {e:<28} {total:>6} B  {len(chain):>2} frames{note}  {via}")
    print(f"deepest_chain {worst}")
    print(f"\nlargest frames (.stack_sizes, bytes):")
    for f, s in sorted(frame.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {s:>6}  {short(names.get(f, f))}")
    if rows:
        print("\ndeepest chain of frames from each entry (direct calls):")
        print("\n".join(rows))
    if args.list_panicking:
        core_panics = {f for f in graph if short(names.get(f, f)).startswith(
            ("core::panicking", "core::slice::index", "core::option", "core::result", "core::cell"))}
        direct = sorted({f for f in panicking if graph.get(f, set()) & core_panics} - core_panics)
        print(f"\nfunctions that call a panic directly ({len(direct)}; the rest reach one through them):")
        for f in direct:
            calls = sorted(short(names.get(c, c), 60) for c in graph[f] & core_panics)
            print(f"  {short(names.get(f, f))}  ->  {', '.join(calls)}")


if __name__ == "__main__":
    main()
