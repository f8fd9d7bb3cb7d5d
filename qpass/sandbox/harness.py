"""The two programs a code-task run starts (qpass.sandbox.runner), and the wire between them.

This file is shipped as source text (`python -I -S -c SOURCE+"candidate_main()"`) into each
sandbox, so it imports nothing but the standard library; the parent imports it too (for
SENTINEL and, in tests, for encode/decode).

- candidate_main: the candidate's interpreter. It reads the program on stdin, runs it, tells
  the checker the program's global names, then answers calls ["call", name, args, kwargs]
  with ["ok", value] or ["raise", exception name, message], until its request pipe closes.
- checker_main: a second interpreter in a sandbox of its own, holding no candidate code. It
  reads a random token and the test source on stdin and runs the tests; a name the tests use
  and the program defines is a proxy (a function: each call a round trip to the candidate),
  the checker's own import (a module of that very name) or a decoded copy (plain data); a
  builtin's name is never taken. Its verdict (the token after the tests' end) goes to its
  own stdout, which the candidate cannot reach.

The wire: frames of a 4-byte big-endian length and JSON text. A value crosses only as plain
builtin data — None, bool, int, float, str, bytes, complex and list, tuple, dict, set,
frozenset of those (exact types, no subclasses) — encoded with a tag per container; the
checker decodes it back into fresh builtin objects, so an object of the candidate's own class
(e.g. one whose __eq__ is always True) never reaches a comparison."""
import builtins
import json
import os
import sys

SENTINEL = "QPASS-TESTS-REACHED-END "
MAX_DEPTH = 200           # nesting of containers in one value
MAX_NAMES = 10000         # global names the program may announce
MAX_VALUE = 1 << 20       # JSON bytes of one announced plain global (bigger ones stay home)
_BIG = 1 << 63            # ints beyond travel as hex (JSON's decimal has a 4300-digit limit)
STOPPED = 3               # the checker's exit code when the candidate stopped answering
EXITED = "exited before the tests finished (the tests did not reach their end)"

_LEAVES = (type(None), bool, int, float, str)        # JSON's own, exact types only
_SEQ = {list: "L", tuple: "T", set: "S", frozenset: "F"}
_SEQ_TYPES = {"L": list, "T": tuple, "S": set, "F": frozenset}


def _deeper(depth):
    if depth >= MAX_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_DEPTH}")
    return depth + 1


def encode(x, depth=0):
    """A JSON-able form of plain builtin data; TypeError for anything else."""
    t = type(x)
    if t is int and not -_BIG <= x < _BIG:
        return ["I", format(x, "x")]
    if t in _LEAVES:
        return x
    depth = _deeper(depth)
    if t in _SEQ:
        return [_SEQ[t], [encode(i, depth) for i in x]]
    if t is dict:
        return ["D", [[encode(k, depth), encode(v, depth)] for k, v in x.items()]]
    if t is bytes:
        return ["B", x.hex()]
    if t is complex:
        return ["C", [x.real, x.imag]]
    raise TypeError(f"a value of type {t.__name__} cannot leave the sandbox (only plain "
                    f"builtin data: None, bool, int, float, str, bytes, complex, list, tuple, "
                    f"dict, set, frozenset)")


def decode(x, depth=0):
    """Fresh builtin objects from encode's form; ValueError/TypeError on anything malformed."""
    if type(x) in _LEAVES:
        return x
    depth = _deeper(depth)
    if type(x) is not list or len(x) != 2 or type(x[0]) is not str:
        raise ValueError("malformed value")
    tag, p = x
    if tag in _SEQ_TYPES and type(p) is list:
        return _SEQ_TYPES[tag](decode(i, depth) for i in p)
    if tag == "D" and type(p) is list:
        out = {}
        for kv in p:
            if type(kv) is not list or len(kv) != 2:
                raise ValueError("malformed dict item")
            out[decode(kv[0], depth)] = decode(kv[1], depth)
        return out
    if tag == "B" and type(p) is str:
        return bytes.fromhex(p)
    if tag == "I" and type(p) is str:
        return int(p, 16)
    if tag == "C" and type(p) is list and len(p) == 2 and all(type(v) is float for v in p):
        return complex(p[0], p[1])
    raise ValueError(f"malformed value (tag {tag!r})")


def send(fd, obj):
    data = json.dumps(obj).encode()
    data = len(data).to_bytes(4, "big") + data
    while data:
        data = data[os.write(fd, data):]


def _read_exact(fd, n):
    chunks = []
    while n:
        b = os.read(fd, min(n, 1 << 20))
        if not b:
            return None
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def recv(fd, limit):
    """The next frame, None at end of file; ValueError for a frame over `limit` bytes or not
    JSON (RecursionError/MemoryError from a hostile frame are errors of the caller too)."""
    head = _read_exact(fd, 4)
    if head is None:
        return None
    n = int.from_bytes(head, "big")
    if n > limit:
        raise ValueError(f"a message of {n} bytes (the limit is {limit})")
    body = _read_exact(fd, n)
    if body is None:
        return None
    return json.loads(body)


# ----- the candidate's side -----

def _announce(ns):
    names = []
    for k, v in list(ns.items()):
        if k.startswith("__"):
            continue
        if type(v) is type(sys):
            names.append([k, "module", getattr(v, "__name__", "")])
        elif callable(v):
            names.append([k, "call", None])
        else:
            try:
                value = encode(v)
                if len(json.dumps(value)) <= MAX_VALUE:
                    names.append([k, "value", value])
            except Exception:
                pass
    return names[:MAX_NAMES]


def candidate_main():
    """argv: request fd, answer fd, message limit. stdin: the program."""
    req, ans, limit = (int(a) for a in sys.argv[1:4])
    src = sys.stdin.read()
    sys.stdin.close()
    path = os.path.join(os.getcwd(), "program.py")
    with open(path, "w") as f:
        f.write(src)
    ns = {"__name__": "__main__", "__builtins__": builtins, "__file__": path}
    exec(compile(src, path, "exec"), ns)
    sys.stdout.flush()
    send(ans, ["ready", _announce(ns)])
    while True:
        msg = recv(req, limit)
        if msg is None:
            sys.stdout.flush()
            os._exit(0)
        try:
            _, name, args, kwargs = msg
            reply = ["ok", encode(ns[name](*decode(args), **decode(kwargs)))]
        except Exception as e:           # SystemExit & co. end this process, as they would
            reply = ["raise", type(e).__name__, str(e)[:2000]]
        send(ans, reply)


# ----- the checker's side -----

class CandidateStopped(BaseException):
    """The candidate's process stopped answering (exited, or broke the wire); a BaseException
    so that a test's `except Exception` cannot swallow it."""


class CandidateError(Exception):
    """The candidate raised an exception that is not a plain builtin one, or answered
    something that is not plain data."""


def _exception(name, message):
    cls = getattr(builtins, name, None) if type(name) is str else None
    if (isinstance(cls, type) and issubclass(cls, Exception)
            and not issubclass(cls, (StopIteration, StopAsyncIteration))):
        try:
            return cls(message)
        except Exception:
            pass
    return CandidateError(f"{name}: {message}")


class _Remote:
    """A callable of the candidate's program: each call is one round trip on the wire."""

    def __init__(self, wire, name):
        self._wire, self.__name__ = wire, name

    def __repr__(self):
        return f"<candidate function {self.__name__}>"

    def __call__(self, *args, **kwargs):
        return self._wire.call(self.__name__, args, kwargs)


class _Wire:
    def __init__(self, req, ans, limit):
        self.req, self.ans, self.limit = req, ans, limit

    def receive(self):
        try:
            msg = recv(self.ans, self.limit)
        except (ValueError, RecursionError, MemoryError) as e:
            raise CandidateStopped(f"the candidate broke the wire: {e}") from None
        if msg is None:
            raise CandidateStopped(EXITED)
        return msg

    def call(self, name, args, kwargs):
        try:
            send(self.req, ["call", name, encode(args), encode(kwargs)])
        except OSError:
            raise CandidateStopped(EXITED) from None
        msg = self.receive()
        if type(msg) is list and len(msg) == 2 and msg[0] == "ok":
            try:
                return decode(msg[1])
            except (ValueError, TypeError, RecursionError, MemoryError) as e:
                raise CandidateError(f"{name} answered a value that is not plain data ({e})") \
                    from None
        if type(msg) is list and len(msg) == 3 and msg[0] == "raise":
            raise _exception(msg[1], str(msg[2])[:2000])
        raise CandidateStopped("the candidate broke the wire: unexpected message")


def _names_used(code):
    """Every name the compiled tests mention (global loads, attributes: a superset)."""
    seen, todo = set(), [code]
    while todo:
        c = todo.pop()
        seen.update(c.co_names)
        todo.extend(k for k in c.co_consts if type(k) is type(code))
    return seen


def _namespace(wire, announced, used):
    import importlib
    ns = {"__name__": "__main__", "__builtins__": builtins}
    if type(announced) is not list:
        raise CandidateStopped("the candidate broke the wire: no list of names")
    for entry in announced[:MAX_NAMES]:
        if type(entry) is not list or len(entry) != 3 or type(entry[0]) is not str:
            continue
        name, kind, payload = entry
        # only names the tests use, never one that would shadow a builtin of the tests
        if name not in used or name.startswith("__") or hasattr(builtins, name):
            continue
        if kind == "call":
            ns[name] = _Remote(wire, name)
        elif kind == "module" and payload == name:      # the checker's own copy of it
            try:
                ns[name] = importlib.import_module(name)
            except Exception:
                pass
        elif kind == "value":
            try:
                ns[name] = decode(payload)
            except Exception:
                pass
    return ns


def checker_main():
    """argv: request fd, answer fd, message limit. stdin: the token line, then the tests."""
    req, ans, limit = (int(a) for a in sys.argv[1:4])
    token, _, test = sys.stdin.read().partition("\n")
    sys.stdin.close()
    code = compile(test, "<tests>", "exec")
    wire = _Wire(req, ans, limit)
    try:
        msg = wire.receive()
        if type(msg) is not list or len(msg) != 2 or msg[0] != "ready":
            raise CandidateStopped("the candidate broke the wire: no ready message")
        exec(code, _namespace(wire, msg[1], _names_used(code)))
    except CandidateStopped as e:
        sys.stderr.write(f"CandidateStopped: {e}\n")
        sys.stderr.flush()
        os._exit(STOPPED)
    sys.stdout.flush()
    os.write(1, f"\n{SENTINEL}{token}\n".encode())
    os._exit(0)
