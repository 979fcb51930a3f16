#!/usr/bin/env python3
"""Print the file-level import graph of guest/src (every `crate::a::b` path, `super::` resolved) and any
cycle in it. Exit status 1 when there is a cycle. Usage: python3 scripts/import-cycles.py [--graph]"""
import os, re, sys
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'guest', 'src')
files = {}
for d, _, fs in os.walk(ROOT):
    for f in fs:
        if f.endswith('.rs'):
            p = os.path.relpath(os.path.join(d, f), ROOT)
            mod = p[:-3].replace(os.sep, '::')
            mod = re.sub(r'(::)?mod$', '', mod)
            if mod == 'lib': mod = ''
            files[mod] = os.path.join(d, f)
def resolve(path):
    """Longest module prefix of a `a::b::c` path that is a file."""
    parts = path.split('::')
    for n in range(len(parts), 0, -1):
        m = '::'.join(parts[:n])
        if m in files: return m
    return None
graph = {m: set() for m in files}
for m, f in files.items():
    src = open(f).read()
    src = re.sub(r'//[^\n]*', '', src)
    src = re.split(r'#\[cfg\(test\)\]\s*mod tests', src)[0]
    parent = m.rsplit('::', 1)[0] if '::' in m else ''
    for use in re.findall(r'\b(crate|super)::([A-Za-z_][A-Za-z0-9_:]*)', src):
        base = '' if use[0] == 'crate' else parent
        full = (base + '::' + use[1]) if base else use[1]
        t = resolve(full.rstrip(':'))
        # `use super::{a, b}` / `use crate::{a::X, b}` groups
        if t is not None and t != m: graph[m].add(t)
    for grp in re.findall(r'\b(crate|super)::\{([^}]*)\}', src):
        base = '' if grp[0] == 'crate' else parent
        for item in grp[1].split(','):
            item = item.strip().split(' ')[0]
            if not item: continue
            full = (base + '::' + item) if base else item
            t = resolve(full)
            if t is not None and t != m: graph[m].add(t)
if '--graph' in sys.argv:
    for m in sorted(graph):
        print(f"{m or 'lib'} -> {', '.join(sorted(x or 'lib' for x in graph[m]))}")
# Cycles: strongly connected components with more than one file (lib.rs re-exports excluded).
g = {m: {t for t in ts if t != ''} for m, ts in graph.items() if m != ''}
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
def strong(v):
    index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
    for w in g.get(v, ()):
        if w not in index: strong(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(sorted(comp))
sys.setrecursionlimit(10000)
for v in g:
    if v not in index: strong(v)
for c in sccs:
    print('cycle:', ' <-> '.join(c))
print(f"{len(g)} files, {sum(len(x) for x in g.values())} edges, {len(sccs)} cycles")
sys.exit(1 if sccs else 0)
