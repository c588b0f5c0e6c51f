#!/usr/bin/env python3
"""Prints the module graph of a crate (each module -> the modules of the crate it uses) and
fails if modules import each other in a circle.

Usage: scripts/module-graph.py crates/acms/src

A module is a file under src/ (lib.rs and main.rs, the crate roots, are left out). A file's own
`#[cfg(test)] mod tests` is left out too, and so is a `tests.rs` beside a folder module's
other files. A folder module (`connection.rs` with `connection/`)
counts as one module for the circle check: its submodules are parts of it, split for length.
Names the crate root re-exports (`crate::Hub`) are resolved to the module that defines them.
"""
import os
import re
import sys


def strip(text):
    found = re.search(r"#\[cfg\(test\)\]\s*mod tests", text)
    if found:
        text = text[: found.start()]
    return re.sub(r"//.*", "", text)


def modules(root):
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if not name.endswith(".rs") or rel in ("lib.rs", "main.rs"):
                continue
            module = rel[:-3].replace(os.sep, "::")
            if module.endswith("::mod"):
                module = module[: -len("::mod")]
            if module.endswith("::tests"):
                # A folder module's tests in a file of their own, as `mod tests` in a file.
                continue
            with open(path) as file:
                found[module] = strip(file.read())
    return found


def reexports(root):
    """`pub use module::{A, B as C}` in lib.rs: re-exported name -> module."""
    names = {}
    with open(os.path.join(root, "lib.rs")) as file:
        text = strip(file.read())
    for found in re.finditer(r"pub use ([a-z_]+)::(\{[^}]*\}|[A-Za-z_]+(?: as [A-Za-z_]+)?);", text):
        module, items = found.groups()
        for item in re.findall(r"[A-Za-z_]+(?: as [A-Za-z_]+)?", items.strip("{}")):
            names[item.split(" as ")[-1]] = module
    return names


def graph(root):
    mods = modules(root)
    names = reexports(root)
    edges = {}
    for module, text in mods.items():
        uses = set()
        paths = []
        for found in re.finditer(r"crate::(\{[^}]*\}|[A-Za-z_]+(?:::[a-z_]+)*)", text):
            group = found.group(1)
            paths += re.findall(r"[A-Za-z_]+(?:::[a-z_]+)*", group) if group.startswith("{") else [group]
        for path in paths:
            parts = path.split("::")
            for length in range(len(parts), 0, -1):
                candidate = "::".join(parts[:length])
                if candidate in mods:
                    uses.add(candidate)
                    break
            else:
                if parts[0] in names:
                    uses.add(names[parts[0]])
        if "::" in module and re.search(r"\bsuper::", text):
            uses.add(module.rsplit("::", 1)[0])
        uses.discard(module)
        edges[module] = sorted(uses)
    return edges


def circles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on.add(node)
        for next_node in edges[node]:
            if next_node not in index:
                visit(next_node)
                low[node] = min(low[node], low[next_node])
            elif next_node in on:
                low[node] = min(low[node], index[next_node])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def main():
    edges = graph(sys.argv[1])
    for module in sorted(edges):
        print(f"{module} -> {', '.join(edges[module]) or '(nothing)'}")
    top = {}
    for module, uses in edges.items():
        top.setdefault(module.split("::")[0], set()).update(use.split("::")[0] for use in uses)
    top = {module: sorted(uses - {module}) for module, uses in top.items()}
    found = circles(top)
    for component in found:
        print("circle:", " ".join(component))
    if found:
        sys.exit(1)
    print("no import circle between modules")


if __name__ == "__main__":
    main()
