"""kiln.jit: trace a function into a graph once per signature, then run the graph.

    @kiln.jit
    def step(x, y):
        ...

The first call with a new signature traces ``step``: it runs once on
symbolic tensors (shape, dtype, no values) and every kiln op records itself
into a graph; later calls with the same signature run that graph on the
eager kernels without running the Python function. What makes a signature:
for each argument leaf (tuples, lists, dicts and None are walked through), a
tensor's shape, dtype and requires_grad; any other value by equality
(a "static" argument). Dimensions marked dynamic (``dynamic=``, or
generalized after a shape change) match any size.

Tensors the function uses without receiving them (module parameters,
optimizer state, closures) are captured by reference: each call reads their
current values, and in-place updates to them (an optimizer step) are written
back. Python side effects run once, at trace time.
"""
import builtins
import collections
import functools
import os
import sys
import threading
import warnings

from . import _C

__all__ = ["jit", "JitFunction", "config", "cond", "while_loop", "print"]


class _Config:
    """Global switches: ``kiln.config.run_functions_eagerly(True)`` makes every jit function plain
    Python; ``compile_by_default`` (True unless ``KILN_JIT_COMPILE=0``) is what ``kiln.jit(f)``
    does when ``compile`` is not given."""

    def __init__(self):
        self._eager = False
        self.compile_by_default = os.environ.get("KILN_JIT_COMPILE", "1") not in ("", "0")

    def run_functions_eagerly(self, enabled=True):
        self._eager = bool(enabled)

    @property
    def functions_run_eagerly(self):
        return self._eager


config = _Config()


def _log_enabled(topic):
    return topic in os.environ.get("KILN_LOG", "").replace(" ", "").split(",")


# ---------------------------------------------------------------- pytrees

class _Leaf:
    __slots__ = ()


_LEAF = _Leaf()


def _flatten(tree, leaves):
    """Appends tree's leaves to ``leaves`` and returns its structure (hashable)."""
    if isinstance(tree, tuple) and not hasattr(tree, "_fields"):
        return ("tuple", tuple(_flatten(x, leaves) for x in tree))
    if isinstance(tree, list):
        return ("list", tuple(_flatten(x, leaves) for x in tree))
    if isinstance(tree, dict):
        keys = tuple(tree.keys())
        return ("dict", keys, tuple(_flatten(tree[k], leaves) for k in keys))
    if tree is None:
        return ("none",)
    leaves.append(tree)
    return ("leaf",)


def _unflatten(structure, leaves):
    it = iter(leaves)

    def build(s):
        kind = s[0]
        if kind == "tuple":
            return tuple(build(x) for x in s[1])
        if kind == "list":
            return [build(x) for x in s[1]]
        if kind == "dict":
            return {k: build(x) for k, x in zip(s[1], s[2])}
        if kind == "none":
            return None
        return next(it)
    return build(structure)


_CONTAINERS = (tuple, list, dict, type(None))
_FLAT_STRUCTURES = {}


def _flat_structure(n):
    """The structure _flatten gives (args, {}) when every arg is a leaf."""
    _FLAT_STRUCTURES[n] = ("tuple", (("tuple", (("leaf",),) * n), ("dict", (), ())))
    return _FLAT_STRUCTURES[n]


# ------------------------------------------------------------ signatures

def _describe_leaf(x):
    if isinstance(x, _C.Tensor):
        return f"tensor{tuple('?' if d is None else d for d in x.shape)} {x.dtype}" + \
            (" requires_grad" if x.requires_grad else "")
    return repr(x)


class _Signature:
    """The cache key of one call: structure, tensor specs (with dynamic dims as None), static values."""

    def __init__(self, structure, leaves, dynamic, specs=None):
        self.structure = structure
        self.specs = specs if specs is not None else _C._signature(leaves, dynamic)
        for i, spec in enumerate(self.specs):
            if spec[0] == "static":
                try:
                    hash(spec[2])
                except TypeError:
                    raise TypeError(f"kiln.jit: argument leaf {i} ({spec[1].__name__}) is neither a tensor nor "
                                    "hashable, so it cannot be part of the cache key; pass it as a tensor, a "
                                    "tuple, or capture it in a closure") from None
        self.key = (structure, self.specs)

    def difference(self, other, names):
        """Why ``other`` (an earlier signature) does not match this one, in words."""
        if self.structure != other.structure:
            return "the argument structure changed (a different nesting of tuples/lists/dicts/None)"
        reasons = []
        for i, (a, b) in enumerate(zip(self.specs, other.specs)):
            if a == b:
                continue
            name = names[i] if i < len(names) else f"leaf {i}"
            if a[0] != b[0]:
                reasons.append(f"argument {name}: a {b[0]} → a {a[0]}")
            elif a[0] == "tensor":
                if a[1] != b[1]:
                    fmt = lambda s: "(" + ", ".join("?" if d is None else str(d) for d in s) + ")"  # noqa: E731
                    reasons.append(f"argument {name}: shape {fmt(b[1])} → {fmt(a[1])}")
                if a[2] != b[2]:
                    reasons.append(f"argument {name}: dtype kiln.{b[2]} → kiln.{a[2]}")
                if a[3] != b[3]:
                    reasons.append(f"argument {name}: requires_grad {b[3]} → {a[3]}")
                if a[4] != b[4]:
                    reasons.append(f"argument {name}: device {b[4]} → {a[4]}")
            else:
                reasons.append(f"argument {name}: static value {b[2]!r} → {a[2]!r}")
        return "; ".join(reasons) or "no difference"


def _leaf_names(fn, args, kwargs):
    """Human names for the flattened leaves: x, batch[0], opts['lr']..."""
    try:
        import inspect
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = []
    names = []

    def walk(tree, name):
        if isinstance(tree, (tuple, list)) and not hasattr(tree, "_fields"):
            for i, x in enumerate(tree):
                walk(x, f"{name}[{i}]")
        elif isinstance(tree, dict):
            for k, x in tree.items():
                walk(x, f"{name}[{k!r}]")
        elif tree is not None:
            names.append(name)
    for i, a in enumerate(args):
        walk(a, params[i] if i < len(params) else f"args[{i}]")
    for k, v in kwargs.items():
        walk(v, k)
    return names


# ----------------------------------------------------------------- traces

class _Entry:
    def __init__(self, signature, traced, out_structure, out_static, reason, trace_ms):
        self.signature = signature
        self.traced = traced
        self.out_structure = out_structure
        self.out_static = out_static  # per output leaf: None (a tensor result) or ("static", value)
        self.reason = reason
        self.trace_ms = trace_ms
        self.calls = 0
        self.runner = None  # traced.run, or a compiled function's run (kiln.jit(compile=True))
        self.compile_note = None  # why it was not compiled, or the compile time
        self.compiled = None  # the _CompiledFunction, when compiled
        self.single = out_structure == ("leaf",) and out_static == [None]  # returns one tensor


def _user_frame(tb):
    """The innermost traceback frame outside the kiln package: 'file:line'."""
    kiln_dir = os.path.dirname(os.path.abspath(__file__))
    where = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not os.path.abspath(filename).startswith(kiln_dir):
            where = f"{filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def _arguments(args, kwargs):
    """(structure, leaves) of a call's arguments: the cache key's first half."""
    if not kwargs and all(type(a) not in _CONTAINERS for a in args):
        return _FLAT_STRUCTURES.get(len(args)) or _flat_structure(len(args)), list(args)  # no nesting to walk
    leaves = []
    return _flatten((args, kwargs), leaves), leaves


class JitFunction:
    """A function traced once per signature and then run as a graph. Made by :func:`jit`."""

    def __init__(self, fn, dynamic=None, max_traces=8, policy="generalize", compile=None, check=False):
        if policy not in ("generalize", "warn", "error"):
            raise ValueError(f"kiln.jit: policy must be 'generalize', 'warn' or 'error', got {policy!r}")
        self.fn = fn
        self.max_traces = max_traces
        self.policy = policy
        if check is True:
            check = {}
        if check is not False and (not isinstance(check, dict) or set(check) - {"rtol", "atol"}):
            raise ValueError("kiln.jit: check must be True, False or a dict with 'rtol' and/or 'atol', "
                             f"got {check!r}")
        self.check = None if check is False else {"rtol": 1e-4, "atol": 1e-5, **check}
        if compile is None:
            compile = config.compile_by_default
        self.compile = bool(compile) or self.check is not None
        self._dynamic_spec = dynamic
        self._dynamic = None  # leaf index -> set of dims, resolved on the first call
        self._entries = collections.OrderedDict()
        self._history = []
        self._lock = threading.Lock()
        functools.update_wrapper(self, fn)

    # ---- calling
    def __call__(self, *args, **kwargs):
        if config.functions_run_eagerly:
            return self.fn(*args, **kwargs)
        structure, leaves = _arguments(args, kwargs)
        entry = self._entry(structure, leaves, args, kwargs)
        entry.calls += 1
        runner = entry.runner
        if runner is None:
            runner = entry.runner = self._runner(entry, leaves)
        results = runner([x for x in leaves if isinstance(x, _C.Tensor)])
        if entry.single:
            return results[0]
        results = iter(results)
        out = [next(results) if s is None else s[1] for s in entry.out_static]
        return _unflatten(entry.out_structure, out)

    def _runner(self, entry, leaves):
        """How a variant runs: compiled to native code when ``compile=True`` (ops the compiler does
        not lower run on the eager kernels between its kernels), else on the graph executor.
        ``KILN_LOG=compile`` says which and why."""
        if not self.compile:
            return entry.traced.run
        if os.environ.get("KILN_DUMP_IR"):
            self._dump_ir(entry, os.environ["KILN_DUMP_IR"])
        reason = None
        if _C.is_grad_enabled() and any(isinstance(x, _C.Tensor) and x.requires_grad for x in leaves):
            reason = "an argument requires grad (compiled code does not record gradients yet)"
        else:
            try:
                compiled = _C._CompiledFunction(entry.traced)
            except _C.KilnError as e:
                reason = str(e)
        log = _log_enabled("compile")
        if reason is not None:
            entry.compile_note = f"not compiled: {reason}"
            if log:
                sys.stderr.write(f"kiln.jit: {self.__name__}: running the graph executor: {reason}\n")
            return entry.traced.run
        entry.compiled = compiled
        host = compiled.host_ops
        how = "loaded from the disk cache" if compiled.from_cache else "compiled"
        if compiled.per_shape:  # dynamic dims: compiled at each new call shape
            entry.compile_note = "compiled per call shape (dynamic dims)"
        else:
            entry.compile_note = (f"{how} in {compiled.compile_ms:.1f} ms: {compiled.num_kernels} kernel(s)"
                                  + (f", {len(host)} op(s) on the eager kernels" if host else ""))
        if log:
            sys.stderr.write(f"kiln.jit: {self.__name__}: {entry.compile_note}\n")
            for line in host:
                sys.stderr.write(f"kiln.jit: {self.__name__}:   eager: {line}\n")
        if self.check is not None:
            if not compiled.comparable:
                entry.compile_note += "; check=True cannot compare it (random ops or control flow)"
                return compiled.run
            rtol, atol = self.check["rtol"], self.check["atol"]
            return lambda args: compiled.run_checked(args, rtol, atol)
        return compiled.run

    def _entry(self, structure, leaves, args, kwargs):
        """The cached variant for these arguments, traced if there is none."""
        if self._dynamic is None:
            self._dynamic = self._resolve_dynamic(args, kwargs, leaves)
        specs = _C._signature(leaves, self._dynamic)
        entry = self._entries.get((structure, specs))
        if entry is None:
            with self._lock:
                signature = _Signature(structure, leaves, self._dynamic, specs)
                entry = self._entries.get(signature.key)
                if entry is None:
                    entry, signature = self._retrace(signature, structure, leaves, args, kwargs)
        return entry

    def lower(self, *args, **kwargs):
        """The variant these arguments select (traced now if it is new), without running it:
        ``f.lower(x, y).ir("traced")`` prints it as kiln-dialect MLIR."""
        structure, leaves = _arguments(args, kwargs)
        return Lowered(self.__name__, self._entry(structure, leaves, args, kwargs))

    def _resolve_dynamic(self, args, kwargs, leaves):
        """``dynamic=`` as {leaf index: dims}: an int (dim 0 of every tensor), a dict {arg name: dims}
        or a sequence per positional argument."""
        spec, out = self._dynamic_spec, {}
        if spec is None:
            return out
        tensor_leaves = [i for i, x in enumerate(leaves) if isinstance(x, _C.Tensor)]
        if isinstance(spec, int):
            return {i: {spec % leaves[i].dim()} for i in tensor_leaves if leaves[i].dim() > 0}
        names = _leaf_names(self.fn, args, kwargs)
        items = spec.items() if isinstance(spec, dict) else enumerate(spec)
        for key, dims in items:
            if dims is None:
                continue
            dims = {dims} if isinstance(dims, int) else set(dims)
            for i in tensor_leaves:
                name = names[i] if i < len(names) else ""
                if (isinstance(key, str) and (name == key or name.startswith(key + "["))) or \
                        (isinstance(key, int) and (name == f"args[{key}]" or
                                                   self._positional_index(name) == key)):
                    out[i] = {d % leaves[i].dim() for d in dims}
        return out

    def _positional_index(self, name):
        try:
            import inspect
            params = list(inspect.signature(self.fn).parameters)
        except (TypeError, ValueError):
            return None
        base = name.split("[")[0]
        return params.index(base) if base in params else None

    def _retrace(self, signature, structure, leaves, args, kwargs):
        names = _leaf_names(self.fn, args, kwargs)
        reason = "first call"
        if self._entries:
            nearest = min(self._entries.values(),
                          key=lambda e: sum(a != b for a, b in zip(e.signature.specs, signature.specs)))
            reason = signature.difference(nearest.signature, names)
            generalized = self._generalize(nearest.signature, signature, names)
            if generalized:
                signature = _Signature(structure, leaves, self._dynamic)
                reason += f" (made {generalized} dynamic)"
                if signature.key in self._entries:
                    return self._entries[signature.key], signature
            if len(self._entries) >= self.max_traces:
                msg = (f"kiln.jit: {self.__name__} has been traced {len(self._entries) + 1} times "
                       f"(budget {self.max_traces}); this time because {reason}. Mark the changing dims "
                       "dynamic (kiln.jit(f, dynamic=...)), or pass changing Python values as tensors")
                if self.policy == "error":
                    raise _C.TraceError(msg)
                warnings.warn(msg, stacklevel=4)
        if _log_enabled("retrace"):
            builtins.print(f"kiln.jit: tracing {self.__name__}: {reason}", file=sys.stderr)
        entry = self._trace(signature, structure, leaves, reason)
        self._entries[signature.key] = entry
        self._history.append(reason)
        return entry, signature

    def _generalize(self, old, new, names):
        """Policy 'generalize': when only tensor dims changed, make those dims dynamic."""
        if self.policy != "generalize" or old.structure != new.structure:
            return None
        changed = {}
        for i, (a, b) in enumerate(zip(old.specs, new.specs)):
            if a == b:
                continue
            if a[0] != "tensor" or b[0] != "tensor" or a[2:] != b[2:] or len(a[1]) != len(b[1]):
                return None
            changed[i] = {d for d, (x, y) in enumerate(zip(a[1], b[1])) if x != y}
        if not changed:
            return None
        for i, dims in changed.items():
            self._dynamic.setdefault(i, set()).update(dims)
        def dims(d):
            return f"dim {min(d)}" if len(d) == 1 else "dims " + ", ".join(map(str, sorted(d)))
        return ", ".join(f"{dims(d)} of {names[i] if i < len(names) else f'leaf {i}'}" for i, d in changed.items())

    def _trace(self, signature, structure, leaves, reason):
        import time
        t0 = time.perf_counter()
        tracer = _C._Tracer(getattr(self.fn, "__name__", "traced"))
        symbolic = []
        for spec, x in zip(signature.specs, leaves):
            if spec[0] == "tensor":
                t = tracer.argument(list(spec[1]), x.dtype, spec[4])
                if spec[3]:
                    t.requires_grad_()
                symbolic.append(t)
            else:
                symbolic.append(x)
        args, kwargs = _unflatten(structure, symbolic)
        tracer.activate()
        warned = []
        real_print = builtins.print

        def tracing_print(*a, **k):
            where = _user_frame_of_stack()
            if where not in warned:
                warned.append(where)
                warnings.warn(f"kiln.jit: print() at {where} runs once, when {self.__name__} is traced, not on "
                              "every call; use kiln.print(...) to print values at run time", stacklevel=2)
            real_print(*a, **k)
        builtins.print = tracing_print
        try:
            out = self.fn(*args, **kwargs)
        except _C.TraceError as e:
            tracer.deactivate()
            where = _user_frame(e.__traceback__)
            raise _C.TraceError(f"{e}\n  (while tracing {self.__name__}, at {where})") from None
        except BaseException:
            tracer.deactivate()
            raise
        finally:
            builtins.print = real_print
        out_leaves = []
        out_structure = _flatten(out, out_leaves)
        tensors = [x for x in out_leaves if isinstance(x, _C.Tensor)]
        out_static = [None if isinstance(x, _C.Tensor) else ("static", x) for x in out_leaves]
        traced = tracer.finish(tensors)
        return _Entry(signature, traced, out_structure, out_static, reason, (time.perf_counter() - t0) * 1e3)

    # ---- introspection
    def cache_report(self):
        """The traced variants and why each was traced (returned as text, and printed)."""
        lines = [f"kiln.jit cache for {self.__name__}: {len(self._entries)} variant(s), "
                 f"budget {self.max_traces}, policy {self.policy!r}"]
        for n, entry in enumerate(self._entries.values(), 1):
            specs = ", ".join(_describe_spec(s) for s in entry.signature.specs)
            lines.append(f"  [{n}] ({specs}): {entry.traced.num_ops} ops, {entry.traced.num_captures} captured, "
                         f"{entry.traced.num_writebacks} written back; traced in {entry.trace_ms:.1f} ms "
                         f"because {entry.reason}; {entry.calls} call(s)"
                         + (f"; {entry.compile_note}" if entry.compile_note else ""))
        text = "\n".join(lines)
        builtins.print(text)
        return text

    def _dump_ir(self, entry, root):
        """KILN_DUMP_IR=dir: every stage of this variant, as dir/<name>-<variant>/<n>-<stage>.mlir
        (the optimized LLVM IR as .ll)."""
        variant = list(self._entries.values()).index(entry) + 1  # the entry is cached before it first runs
        folder = os.path.join(root, f"{self.__name__}-{variant}")
        os.makedirs(folder, exist_ok=True)
        for n, stage in enumerate(Lowered.STAGES):
            try:
                text = entry.traced.ir(stage, True, False)
            except _C.KilnError as e:
                text = f"// {stage}: {e}\n"
            name = f"{n}-{stage}." + ("ll" if stage == "optimized" else "mlir")
            tmp = os.path.join(folder, f".{name}.tmp")
            with open(tmp, "w") as out:
                out.write(text)
            os.replace(tmp, os.path.join(folder, name))

    def _cache_key(self, *args, **kwargs):
        """The disk-cache key of the compiled code for these arguments (kiln.cache.explain_miss)."""
        structure, leaves = _arguments(args, kwargs)
        entry = self._entry(structure, leaves, args, kwargs)
        return _C._compiled_cache_key(entry.traced)

    def stats(self):
        """Per traced variant (a list of dicts, in cache order): calls, trace and compile times,
        whether it runs compiled (or was loaded from the disk cache), kernels per call (each with
        the rows of its outer loop that the thread pool splits; 0: one thread), eager ops per call
        (with the reason each op was not compiled), and the peak bytes of intermediates its last
        call held at once."""
        out = []
        for entry in self._entries.values():
            c = entry.compiled
            out.append({
                "signature": ", ".join(_describe_spec(s) for s in entry.signature.specs),
                "calls": entry.calls,
                "trace_ms": entry.trace_ms,
                "compiled": c is not None,
                "compile_ms": c.compile_ms if c else None,
                "from_disk_cache": c.from_cache if c else False,
                "kernels_per_call": c.num_kernels if c else 0,
                "kernels": [{"name": n, "parallel_rows": r} for n, r in c.kernels] if c else [],
                "eager_ops_per_call": len(c.host_ops) if c else entry.traced.num_ops,
                "eager_ops": list(c.host_ops) if c else [],
                "peak_intermediate_bytes": c.peak_intermediate_bytes if c else None,
                "note": entry.compile_note,
            })
        return out

    @property
    def num_traces(self):
        return len(self._history)


class Lowered:
    """A traced variant of a jit function, as its IR (made by :meth:`JitFunction.lower`)."""

    STAGES = ("traced", "simplified", "decomposed", "linalg", "fused", "bufferized", "llvm", "optimized")

    def __init__(self, name, entry):
        self.name = name
        self._entry = entry

    def ir(self, stage="traced", *, locations=True, generic=False):
        """The IR of ``stage`` as text: "traced" is the kiln dialect as recorded, each op located at
        the user's file:line; "simplified" after folding (constants through the eager kernels,
        no-op reshapes), dead-op removal and CSE. ``locations=False`` leaves the locations out;
        ``generic=True`` prints MLIR's generic op form. The compiler's stages: "decomposed" (composite
        ops such as linear split into primitives), "linalg" (the ops that lower, as linalg.generic on
        tensors; the others stay kiln ops and run on the eager kernels), "fused" (fusion, then each
        kernel outlined into a function the schedule calls), "bufferized" (the kernels on memrefs,
        results as out-parameters), "llvm" (the llvm dialect), "optimized" (LLVM IR after LLVM's
        O2 for this CPU: vectorized loops show as <16 x float>); they raise kiln.KilnError for a
        function the compiler does not handle (control flow), saying why."""
        if stage not in self.STAGES:
            raise ValueError(f"kiln.jit: {self.name}: no IR stage {stage!r}; the stages are "
                             f"{', '.join(map(repr, self.STAGES))} (traced graphs run on the eager kernels)")
        return self._entry.traced.ir(stage, locations, generic)

    def bytecode(self):
        """The traced module as MLIR bytecode (bytes), readable by kiln.ir_parse and mlir-opt."""
        return self._entry.traced.bytecode()

    def __repr__(self):
        return f"<kiln.jit lowered {self.name}: {self._entry.traced.num_ops} ops>"


def ir_parse(source, *, locations=True, generic=False):
    """Parses kiln-dialect IR (text or bytecode), verifies it and prints it again; raises
    kiln.IrError with MLIR's diagnostics when it does not parse or verify."""
    if isinstance(source, str):
        source = source.encode()
    return _C._ir_reprint(source, locations, generic)


def _describe_spec(spec):
    if spec[0] == "tensor":
        shape = "(" + ", ".join("?" if d is None else str(d) for d in spec[1]) + ("," if len(spec[1]) == 1 else "") + ")"
        return f"tensor{shape} kiln.{spec[2]}" + (" requires_grad" if spec[3] else "") + \
            ("" if spec[4] == "cpu" else f" on {spec[4]}")
    return f"static {spec[2]!r}"


def _user_frame_of_stack():
    kiln_dir = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not os.path.abspath(filename).startswith(kiln_dir):
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def cond(pred, true_fn, false_fn, *operands):
    """``true_fn(*operands)`` if ``pred`` else ``false_fn(*operands)``.

    Eagerly this is plain Python. Inside a kiln.jit function both branches are traced into one
    ``cond`` node and the choice is made each time the graph runs, so a tensor predicate works.
    The branches take the operands (tensors) and return a tensor or a tuple of tensors of the same
    shapes and dtypes; they may read other tensors (closures), but not update them in place.
    """
    if not _C._is_tracing() or not isinstance(pred, _C.Tensor):
        return true_fn(*operands) if pred else false_fn(*operands)
    out = _C._cond(pred, true_fn, false_fn, list(operands))
    return out[0] if len(out) == 1 and not _returns_tuple(true_fn, operands) else tuple(out)


def while_loop(cond_fn, body_fn, init):
    """``while cond_fn(*vals): vals = body_fn(*vals)`` from ``vals = init`` (a tuple of tensors).

    Eagerly this is a Python loop. Inside a kiln.jit function the condition and the body are traced
    once into a ``while_loop`` node that loops when the graph runs. ``body_fn`` returns the loop
    values with unchanged shapes and dtypes; ``cond_fn`` returns a one-element bool tensor.
    """
    init = tuple(init) if isinstance(init, (tuple, list)) else (init,)
    if not _C._is_tracing():
        vals = init
        while bool(cond_fn(*vals)):
            out = body_fn(*vals)
            vals = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        return vals
    return tuple(_C._while_loop(cond_fn, body_fn, list(init)))


def print(x, label=""):  # noqa: A001  (kiln.print, like tf.print / jax.debug.print)
    """Prints ``label`` and the tensor ``x`` when this runs: inside a kiln.jit function, on every call
    of the traced graph (Python's print runs only once, at trace time). Returns ``x``."""
    return _C._print_value(x, str(label))


def _returns_tuple(fn, operands):
    return False  # single-tensor branches return a tensor; tuples come back as tuples (len > 1)


def jit(fn=None, *, dynamic=None, max_traces=8, policy="generalize", compile=None, check=False):
    """Trace ``fn`` per signature and run the traced graph (see the module docstring).

    dynamic: dims that may change without a retrace: an int (that dim of every tensor argument),
      {argument name: dim or dims}, or a sequence per positional argument.
    max_traces, policy: after ``max_traces`` variants, 'warn' warns and 'error' raises; 'generalize'
      (default) makes a dim that changed between calls dynamic instead of tracing a new variant.
    compile: native CPU code (default ``kiln.config.compile_by_default``: True unless
      ``KILN_JIT_COMPILE=0``). The ops that lower become fused, vectorized kernels whose outer
      loops run on the thread pool (linalg, fusion, LLVM); the others (e.g. matmul, which calls
      BLAS) run on the eager kernels between them. False runs the graph executor: every op on
      the eager kernels, bitwise equal to eager. Variants with control flow run on the graph
      executor. ``KILN_LOG=compile`` prints what was compiled and why each other op was not;
      ``KILN_DUMP_IR=dir`` writes every stage's IR; ``f.stats()`` reports kernels per call and times.
    check: True (or {"rtol": .., "atol": ..}; default 1e-4, 1e-5) compiles and also runs every
      call on the eager kernels, raising kiln.CheckError that names the first op (and its line)
      whose compiled result differs; nothing is written back then.
    """
    if fn is None:
        return lambda f: jit(f, dynamic=dynamic, max_traces=max_traces, policy=policy, compile=compile, check=check)
    return JitFunction(fn, dynamic=dynamic, max_traces=max_traces, policy=policy, compile=compile, check=check)
