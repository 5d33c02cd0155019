#!/usr/bin/python3
"""Regenerates the "The stages, printed" section of docs/compiler.md from examples/print_stages.py
(so the IR in the docs is what the code prints). Run from the repo root:

    PYTHONPATH=python /usr/bin/python3 scripts/update_compiler_doc.py
"""
import os
import re
import subprocess
import sys

MARK_BEGIN, MARK_END = "<!-- stages: begin (scripts/update_compiler_doc.py) -->", "<!-- stages: end -->"
LLVM_LINES = 60  # the llvm stage is long: its first lines

out = subprocess.run([sys.executable, "examples/print_stages.py"], capture_output=True, text=True, check=True,
                     env=dict(os.environ, PYTHONPATH="python")).stdout
parts = re.split(r"^// ===== (\w+) =====\n", out, flags=re.M)
note = parts[-1].strip().splitlines()[-1].split(": ", 1)[-1]  # "1 kernel(s), 1 op(s) on the eager kernels"
sections = [MARK_BEGIN, "", f"Printed by `examples/print_stages.py`; the function runs as {note}.", ""]
for stage, text in zip(parts[1::2], parts[2::2]):
    lines = text.rstrip().splitlines()
    if stage in ("llvm", "optimized") and len(lines) > LLVM_LINES:
        lines = lines[:LLVM_LINES] + [f"  ... ({len(lines) - LLVM_LINES} more lines)"]
    while lines and lines[-1].startswith("//"):
        lines.pop()
    sections += [f"### {stage}", "", "```llvm" if stage == "optimized" else "```mlir", *lines, "```", ""]
sections.append(MARK_END)
doc_path = "docs/compiler.md"
doc = open(doc_path).read()
begin, end = doc.index(MARK_BEGIN), doc.index(MARK_END) + len(MARK_END)
open(doc_path, "w").write(doc[:begin] + "\n".join(sections) + doc[end:])
print(f"{doc_path}: {len(parts) // 2} stages")
