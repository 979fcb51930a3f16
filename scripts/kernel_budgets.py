#!/usr/bin/env python3
"""ccdma's code and stack figures inside a test kernel image (qemu/kernel, qemu/pseries).

    python3 scripts/kernel_budgets.py ELF [--objdump TOOL] [--chain NAME=REGEX]... [--instance TYPE]...
                                          [--top N]

ELF is a kernel as qemu/run.sh builds it: `-C symbol-mangling-version=v0` (demangled names carry
their type parameters) and `-Z emit-stack-sizes` (LLVM's frame size of every function compiled with
it in a `.stack_sizes` section). scripts/kernel-budgets.sh runs this on both kernels and judges the
figures. Prints `key value` lines, then tables:

- text, ccdma_text, ffi_text: `.text` of the image; bytes of functions defined by ccdma (guest/)
  and by its C interface (ffi/), by symbol size;
- per instance: ccdma's and ffi's bytes grouped by the types from other crates their names carry
  (the platform type a `DmaLayer<P>` is instantiated for, a HAL binding, ...): "non-generic" is code
  that names none;
- max_frame_<group>: the largest frame of the DMA set-up (`setup`: the kernel's dma::init and
  everything named init/enable_iommu/add_pool/ccdma_layer_init in the kernel, its common crate,
  ccdma and ffi), of ccdma (guest/), of ffi/, and of the kernel's own code (kernel + common);
- chain_<NAME>: the deepest chain of frames through direct calls from the function matching REGEX
  (indirect calls are not followed; cycles are cut).
- instance TYPE BYTES: ccdma's bytes for each instance named with --instance (as in the table).
  A named instance with no function at all is an error (exit status 1): a renamed type would
  otherwise read as 0 bytes and pass every ceiling.

Reads the ELF itself (either byte order, 64-bit); disassembles with TOOL (objdump of the target's
binutils) for the call graph; demangles with c++filt. Exit status 0 unless an --instance has no
function; ceilings are the shell script's job.
"""

import argparse
import re
import struct
import subprocess
import sys
from collections import defaultdict

# The ELF-independent parts are budgets.py's (the C staticlib's figures): one copy.
from budgets import deepest, short, stack_size_pairs

CCDMA = "ccdma"
FFI = "ccdma_ffi"
KERNEL_CRATES = ("ccdma_test_kernel", "ccdma_pseries_kernel", "ccdma_qemu_common")
# Crates whose types say nothing about an instance (primitives, core's wrappers, the layer itself).
NEUTRAL = ("core", "alloc", "compiler_builtins", CCDMA)
# The DMA set-up: the kernels' dma and IOMMU modules, and how ccdma and ffi build a layer.
SETUP_KERNEL = re.compile(r"::(dma|iommu|virtio_iommu|tce|setup)::|::start_iommu\b|::enable_iommu\b")
SETUP_CCDMA = re.compile(r"::(new|init|init_in|init_with|add_pool|enable_iommu)\b|^ccdma_(layer_init|enable_iommu|add_pool)$")


class Elf:
    def __init__(self, path):
        self.data = open(path, "rb").read()
        d = self.data
        if d[:4] != b"\x7fELF" or d[4] != 2:
            sys.exit(f"{path}: not a 64-bit ELF")
        self.e = "<" if d[5] == 1 else ">"
        (shoff,) = struct.unpack_from(self.e + "Q", d, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(self.e + "HHH", d, 0x3A)
        self.sections = []
        for i in range(shnum):
            name, typ, flags, addr, off, size, link, info, align, entsize = struct.unpack_from(
                self.e + "IIQQQQIIQQ", d, shoff + i * shentsize)
            self.sections.append(dict(name=name, type=typ, addr=addr, off=off, size=size, link=link))
        strtab = self.sections[shstrndx]
        for s in self.sections:
            s["name"] = self.cstr(strtab["off"] + s["name"])

    def cstr(self, off):
        return self.data[off:self.data.index(b"\0", off)].decode()

    def section(self, name):
        return next((s for s in self.sections if s["name"] == name), None)

    def bytes_of(self, s):
        return self.data[s["off"]:s["off"] + s["size"]]

    def functions(self):
        """{name: (address, size)} of STT_FUNC symbols."""
        symtab = self.section(".symtab")
        if symtab is None:
            sys.exit("no symbol table (stripped image)")
        strtab = self.sections[symtab["link"]]
        funcs = {}
        for off in range(symtab["off"], symtab["off"] + symtab["size"], 24):
            name, info, other, shndx, value, size = struct.unpack_from(self.e + "IBBHQQ", self.data, off)
            if info & 0xF == 2 and shndx != 0 and size:  # STT_FUNC, defined
                funcs[self.cstr(strtab["off"] + name)] = (value, size)
        return funcs

    def stack_sizes(self):
        """{address: frame bytes} from .stack_sizes."""
        s = self.section(".stack_sizes")
        return {} if s is None else stack_size_pairs(self.bytes_of(s), self.e)


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return {n: re.sub(r"\[[0-9a-f]{1,16}\]", "", d) for n, d in zip(names, out.splitlines())}


def owner(name):
    """The crate that defines the function: the first crate named, after `<`, `&`, pointers."""
    m = re.match(r"^[<&*\s]*(?:mut |const |dyn )*([A-Za-z_][A-Za-z0-9_]*)::", name)
    return m.group(1) if m else name


def instance(name):
    """The types from other crates that a ccdma function's name carries: its instance."""
    types = set()
    # A trait a method implements says nothing about the instance.
    name = re.sub(r" as [A-Za-z0-9_:]+(<[^<>]*>)?>", ">", name)
    for m in re.finditer(r"\b([a-z_][a-z0-9_]*)((?:::[A-Za-z_][A-Za-z0-9_]*)+)", name):
        crate, path = m.group(1), m.group(2)
        last = path.rsplit("::", 1)[-1]
        if crate in NEUTRAL or not last[:1].isupper():
            continue
        types.add(crate + path)
    return " + ".join(sorted(types)) or "non-generic"


def call_graph(tool, elf_path, by_addr):
    """({caller: {callee}}, {caller: indirect calls}) from direct calls and jumps (x86, ppc64)."""
    graph, indirect = defaultdict(set), defaultdict(int)
    current = None
    out = subprocess.run([tool, "-d", "--no-show-raw-insn", elf_path], capture_output=True, text=True,
                         check=True).stdout
    for line in out.splitlines():
        m = re.match(r"^([0-9a-f]+) <(.+)>:$", line)
        if m:
            current = by_addr.get(int(m.group(1), 16), m.group(2))
            graph[current]
            continue
        if current is None:
            continue
        m = re.search(r"\t(call|jmp|j[a-z]+|bl|b|b[a-z]+)\s+([0-9a-f]+) <([^>+]+)(\+0x[0-9a-f]+)?>$", line)
        if m:
            target = by_addr.get(int(m.group(2), 16)) or m.group(3)
            # ppc64 ELFv2: `bl f+0x8` enters f at its local entry point; other offsets are jumps
            # inside the function.
            if target != current and (m.group(4) is None or m.group(4) == "+0x8"):
                graph[current].add(target)
            continue
        if re.search(r"\t(call|jmp)\s+\*|\tbctrl?\b", line):
            indirect[current] += 1
    return graph, indirect


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("elf")
    ap.add_argument("--objdump", default="objdump")
    ap.add_argument("--chain", action="append", default=[], help="NAME=REGEX on demangled names")
    ap.add_argument("--instance", action="append", default=[],
                    help="TYPE (as in the per-instance table) that must have ccdma code: its bytes")
    ap.add_argument("--top", type=int, default=6)
    ap.add_argument("--whole", action="store_true", help="print every frame of each chain, one a line")
    args = ap.parse_args()

    elf = Elf(args.elf)
    funcs = elf.functions()
    names = demangle(sorted(funcs))
    by_addr = {}
    for sym, (addr, _) in sorted(funcs.items()):
        by_addr.setdefault(addr, sym)
    frame = {by_addr[a]: s for a, s in elf.stack_sizes().items() if a in by_addr}
    text = elf.section(".text")["size"]

    groups = {CCDMA: defaultdict(int), FFI: defaultdict(int)}
    totals = defaultdict(int)
    for sym, (_, size) in funcs.items():
        crate = owner(names[sym])
        if sym.startswith("ccdma_"):  # the C interface's exports (#[no_mangle])
            crate = FFI
        if crate in groups:
            totals[crate] += size
            groups[crate][instance(names[sym]) if crate == CCDMA else "the C interface (ffi/)"] += size
    print(f"text {text}")
    print(f"ccdma_text {totals[CCDMA]}")
    print(f"ffi_text {totals[FFI]}")
    print(f"functions {len(funcs)}")
    print(f"with_frame {len(frame)}")
    missing = [t for t in args.instance if not groups[CCDMA].get(t)]
    for t in args.instance:
        print(f"instance {t} {groups[CCDMA].get(t, 0)}")

    def category(sym):
        n, crate = names[sym], owner(names[sym])
        kernel_types = any(k + "::" in n for k in KERNEL_CRATES)
        cats = []
        if crate == CCDMA or (crate in ("core", "alloc") and "ccdma::" in n and not kernel_types):
            cats.append("ccdma")
        if crate == FFI or sym.startswith("ccdma_"):
            cats.append("ffi")
        # The kernel's own code: its crates, other crates' code instantiated for their types, and
        # its unmangled Rust functions (kmain, ...; C code has no .stack_sizes entry).
        if crate in KERNEL_CRATES or (crate not in (CCDMA, FFI) and kernel_types) or (
            not sym.startswith(("_R", "ccdma_")) and crate == n
        ):
            cats.append("kernel")
        if (crate in KERNEL_CRATES and SETUP_KERNEL.search(n)) or (
            (crate in (CCDMA, FFI) or sym.startswith("ccdma_")) and SETUP_CCDMA.search(n)
        ):
            cats.append("setup")
        return cats

    tops = defaultdict(list)
    for sym, size in frame.items():
        for c in category(sym):
            tops[c].append((size, sym))
    for c in ("setup", "ccdma", "ffi", "kernel"):
        print(f"max_frame_{c} {max(tops[c], default=(0, ''))[0]}")

    rows = []
    graph = None
    for spec in args.chain:
        key, _, pattern = spec.partition("=")
        rx = re.compile(pattern)
        hits = sorted((s for s in funcs if rx.search(names[s])), key=lambda s: len(names[s]))
        if not hits:
            rows.append(f"  {key:<12} no function matches {pattern}")
            continue
        if graph is None:
            graph, _ = call_graph(args.objdump, args.elf, by_addr)
        total, chain, cycles, _ = deepest(graph, frame, hits[0])
        print(f"chain_{key} {total}")
        note = f", {len(cycles)} cycle(s) cut" if cycles else ""
        rows.append(f"  {key:<12} {total:>6} B  {len(chain):>2} frames{note}: " +
                    " > ".join(f"{short(names.get(f, f), 60)} ({frame.get(f, 0)})" for f in chain[:5]) +
                    (" > ..." if len(chain) > 5 else ""))
        if args.whole:
            rows.extend(f"      {frame.get(f, 0):>6}  {short(names.get(f, f), 150)}" for f in chain)

    for crate, title in ((CCDMA, "ccdma (guest/)"), (FFI, "ffi/")):
        if not totals[crate]:
            continue
        print(f"\n{title} .text per instance (bytes, by the types from other crates in the names):")
        for key, size in sorted(groups[crate].items(), key=lambda kv: -kv[1])[:12]:
            print(f"  {size:>7}  {short(key, 118)}")
        rest = sorted(groups[crate].items(), key=lambda kv: -kv[1])[12:]
        if rest:
            print(f"  {sum(s for _, s in rest):>7}  ({len(rest)} more instances)")
    for c, title in (("setup", "DMA set-up"), ("ccdma", "ccdma (guest/)"), ("ffi", "ffi/"),
                     ("kernel", "the kernel and qemu/common")):
        if tops[c]:
            print(f"\nlargest frames, {title} (.stack_sizes, bytes):")
            for size, sym in sorted(tops[c], reverse=True)[: args.top]:
                print(f"  {size:>6}  {short(names[sym], 118)}")
    if rows:
        print("\ndeepest chains of frames (direct calls only):")
        print("\n".join(rows))
    if missing:
        sys.exit(f"kernel_budgets.py: no ccdma function instantiated for {', '.join(missing)}: a type renamed, "
                 "or names without v0 mangling? (the instances present are in the table above)")


if __name__ == "__main__":
    main()
