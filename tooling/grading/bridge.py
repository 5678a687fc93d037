"""Calls across the boundary between the grader and a submission's worker, by value.

Both sides run a `Peer`. Tensors, numbers, strings, containers, dataclasses and modules cross as
copies; functions and classes cross as handles, so calling one runs it on the side that owns
it. A call sends its arguments and receives the result plus every change the callee made to
them (a tensor changed in place, a module attribute replaced), so the caller's objects end up
as they would in one process. Gradients cross too: an output that requires grad is attached
to the caller's inputs by `_Attach`, whose backward asks the callee for the vector-Jacobian
product. Neither side ever unpickles, imports a module it was told to, or runs code it
received; the grader resolves classes by name only within `Peer.resolvable`.
"""

import builtins
import dataclasses
import inspect
import math
import random
import traceback
import types
from collections import OrderedDict, namedtuple
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from part_utils.tracebacks import learner_location
from tooling.grading.wire import Channel

DTYPES = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.complex64,
        torch.complex128,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    )
}
MAX_DEPTH = 24
GRADING_DIR = str(Path(__file__).resolve().parent)
MODULE_STATE = ("_parameters", "_buffers", "_modules")
TORCH_INTERNALS = frozenset(
    {
        "training",
        "_parameters",
        "_buffers",
        "_non_persistent_buffers_set",
        "_backward_pre_hooks",
        "_backward_hooks",
        "_is_full_backward_hook",
        "_forward_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
        "_forward_pre_hooks",
        "_forward_pre_hooks_with_kwargs",
        "_state_dict_hooks",
        "_state_dict_pre_hooks",
        "_load_state_dict_pre_hooks",
        "_load_state_dict_post_hooks",
        "_modules",
        "_compiled_call_impl",
    }
)


class BridgeError(RuntimeError):
    """The other side sent something this side cannot accept."""


class Refused(AttributeError):
    """Learner code asked for the reference implementation of what is being checked."""


@dataclasses.dataclass
class _CallRecord:
    """What the callee keeps of a call for later backward passes."""

    leaves: list[torch.Tensor]
    outputs: list[torch.Tensor]


class _Attach(torch.autograd.Function):
    """Connects a call's outputs to the caller's inputs; backward asks the callee for the gradients."""

    @staticmethod
    def forward(ctx: Any, link: tuple["Peer", Any, int, list], *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.link = link
        return tuple(tensor.clone() for tensor in tensors[link[2] :])

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:
        peer, call, n_inputs, shapes = ctx.link
        found = peer.request("vjp", call=call, grads=list(grads))
        if not isinstance(found, list) or len(found) != n_inputs:
            raise BridgeError("malformed gradients")
        for grad, shape in zip(found, shapes):
            if grad is not None and (not isinstance(grad, torch.Tensor) or tuple(grad.shape) != shape):
                raise BridgeError("a gradient of the wrong shape")
        return (None, *found, *([None] * len(grads)))


def _grading_file(filename: str) -> bool:
    return filename.startswith(GRADING_DIR)


def describe_error(error: BaseException) -> dict:
    return {
        "type": type(error).__name__,
        "builtin": type(error).__module__ == "builtins",
        "message": str(error)[:4000],
        "location": getattr(error, "learner_location", None) or learner_location(error, ours=_grading_file),
        "not_implemented": isinstance(error, NotImplementedError),
        "trace": (getattr(error, "remote_trace", "") + "".join(traceback.format_exception(error)))[-8000:],
    }


def rebuild_error(described: Any) -> Exception:
    """An exception with the other side's type name and text; never an instance of the grader's own check failures."""
    if not isinstance(described, dict):
        return BridgeError("the other side failed without saying why")
    name = str(described.get("type", "Error"))[:80]
    message = str(described.get("message", ""))[:4000]
    base = getattr(builtins, name, None) if described.get("builtin") else None
    if not (isinstance(base, type) and issubclass(base, Exception)):
        base = NotImplementedError if described.get("not_implemented") else RuntimeError
    kind = type(
        name if name.isidentifier() else "Error", (base,), {"__str__": lambda self: message, "__module__": "learner"}
    )
    error = kind.__new__(kind)
    error.args = (message,)
    error.learner_location = str(described.get("location", "your code"))[:200]
    error.remote_trace = str(described.get("trace", ""))[:8000]
    return error


class Peer:
    """One side of the boundary: what it handed out by handle, and how it encodes and decodes values."""

    def __init__(
        self, channel: Channel, *, resolvable: Callable[[str], bool], exportable: Callable[[object], bool]
    ) -> None:
        self.channel = channel
        self.resolvable, self.exportable = resolvable, exportable
        self.exports: dict[int, object] = {}
        self.tokens: dict[int, type] = {}
        """Classes this side sent by name, so that a mirror of one comes back as the class itself (never callable)."""
        self.export_ids: dict[int, int] = {}
        self.proxies: dict[int, object] = {}
        self.calls: dict[int, _CallRecord] = {}
        self.next_id = 1
        self.exercise_names: frozenset[str] = frozenset()
        """Methods learners write in the part being graded: a mirror never runs the reference's."""
        self.learner_namespace: dict[str, Any] | None = None
        """The notebook's globals (worker side): where a mirror finds the learner's own version of those methods."""
        self.ops: dict[str, Callable[..., Any]] = {
            "call": self._serve_call,
            "vjp": self._serve_vjp,
            "release": self._serve_release,
        }

    # Messages -------------------------------------------------------------------------------

    def request(self, op: str, **payload: Any) -> Any:
        """Send a request; serve the other side's requests until its reply comes."""
        raw, decoder, _ = self._exchange(op, payload)
        return decoder.decode(raw)

    def _exchange(self, op: str, payload: dict) -> tuple[Any, "Decoder", "Encoder"]:
        encoder = Encoder(self)
        header = {"op": op, "id": self._new_id(), "payload": encoder.encode(payload)}
        self.channel.send({**header, "tensors": encoder.tensor_meta}, encoder.buffers)
        while True:
            message, buffers = self.channel.receive()
            if "op" in message:
                self._serve(message, buffers)
                continue
            if message.get("re") != header["id"]:
                raise BridgeError("a reply to a request that was not made")
            if "error" in message:
                raise rebuild_error(message["error"])
            decoder = Decoder(self, message.get("tensors"), buffers)
            decoder.sent, decoder.sent_modules, decoder.sent_objects = (
                encoder.sent_tensors,
                encoder.sent_modules,
                encoder.sent_objects,
            )
            return message.get("value"), decoder, encoder

    def serve_forever(self) -> None:
        while True:
            message, buffers = self.channel.receive()
            self._serve(message, buffers)

    def _serve(self, message: dict, buffers: list[bytes]) -> None:
        encoder = Encoder(self)
        try:
            handler = self.ops.get(str(message.get("op")))
            if handler is None:
                raise BridgeError(f"unknown request {message.get('op')!r}")
            decoder = Decoder(self, message.get("tensors"), buffers)
            payload = decoder.decode(message.get("payload"))
            if not isinstance(payload, dict):
                raise BridgeError("malformed request")
            reply = {"re": message.get("id"), "value": encoder.encode(handler(decoder, **payload))}
        except BaseException as error:  # noqa: BLE001  (learner code may raise anything, SystemExit included)
            if isinstance(error, KeyboardInterrupt):
                raise
            encoder = Encoder(self)
            reply = {"re": message.get("id"), "error": describe_error(error)}
        self.channel.send({**reply, "tensors": encoder.tensor_meta}, encoder.buffers)

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def export(self, value: object) -> int:
        handle = self.export_ids.get(id(value))
        if handle is None:
            handle = self._new_id()
            self.exports[handle], self.export_ids[id(value)] = value, handle
        return handle

    # Calls ----------------------------------------------------------------------------------

    def call(self, handle: int, args: tuple, kwargs: dict) -> Any:
        """Call the other side's function `handle` on copies of the arguments; bring back result and changes."""
        grad = torch.is_grad_enabled()
        seed = int(torch.randint(0, 2**62, ()).item())
        payload = {
            "target": handle,
            "args": list(args),
            "kwargs": dict(kwargs),
            "grad": grad,
            "seed": seed,
            "threads": torch.get_num_threads(),
        }
        raw, decoder, encoder = self._exchange("call", payload)
        if not isinstance(raw, dict):
            raise BridgeError("malformed reply")
        result = decoder.decode(raw.get("result"))
        with torch.no_grad():
            for index, node in (_pair(entry) for entry in _items(raw.get("changed", []))):
                _write_back(decoder.sent_tensor(index), decoder.decode(node))
        for index, state in (_pair(entry) for entry in _items(raw.get("modules", []))):
            if not isinstance(index, int) or not 0 <= index < len(encoder.sent_modules):
                raise BridgeError("no such module")
            decoder.apply_state(encoder.sent_modules[index], state)
        torch.set_grad_enabled(bool(raw.get("grad_after", grad)))
        outputs = [decoder.tensor(index) for index in _items(raw.get("outputs", []))]
        if not grad or not outputs:
            return result
        inputs = [tensor for tensor, meta in zip(encoder.sent_tensors, encoder.tensor_meta) if _differentiable(meta)]
        if not any(tensor.requires_grad for tensor in inputs):
            for output in outputs:
                output.requires_grad_(True)
            return result
        attached = _Attach.apply(
            (self, raw.get("call"), len(inputs), [tuple(t.shape) for t in inputs]), *inputs, *outputs
        )
        return _substitute(result, {id(old): new for old, new in zip(outputs, attached)})

    def _serve_call(
        self, decoder: "Decoder", *, target: Any, args: list, kwargs: dict, grad: bool, seed: int, threads: int
    ) -> Any:
        function = self.exports.get(target) if isinstance(target, int) else None
        if function is None or not callable(function):
            raise BridgeError("no such function")
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            import numpy

            numpy.random.seed(seed % 2**32)
        except ImportError:
            pass
        if threads != torch.get_num_threads():
            torch.set_num_threads(max(1, int(threads)))
        with torch.set_grad_enabled(bool(grad)):
            result = function(*args, **kwargs)
            grad_after = torch.is_grad_enabled()
        return CallReply(result, decoder, grad_after)

    def _serve_vjp(self, decoder: "Decoder", *, call: int, grads: list) -> list:
        record = self.calls.get(call)
        if record is None:
            raise BridgeError("no such call")
        outputs = [(output, grad) for output, grad in zip(record.outputs, grads) if isinstance(grad, torch.Tensor)]
        if not record.leaves or not outputs:
            return [None] * len(record.leaves)
        with torch.enable_grad():
            found = torch.autograd.grad(
                [output for output, _ in outputs],
                record.leaves,
                [grad.to(output.dtype) for output, grad in outputs],
                allow_unused=True,
                retain_graph=True,
            )
        return [None if grad is None else grad.detach() for grad in found]

    def _serve_release(self, decoder: "Decoder") -> None:
        self.calls.clear()

    # Proxies for the other side's functions and classes -----------------------------------

    def remote_function(self, handle: int, description: dict) -> Callable[..., Any]:
        peer, name = self, str(description.get("name", "function"))

        def remote(*args: Any, **kwargs: Any) -> Any:
            return peer.call(handle, args, kwargs)

        remote.__name__ = name if name.isidentifier() else "function"
        remote.__qualname__ = str(description.get("qualname", name))
        remote.__module__ = str(description.get("module", "__main__"))
        remote.__doc__ = description.get("doc") if isinstance(description.get("doc"), str) else None
        remote.__signature__ = _signature(description.get("signature"))
        remote._bridge_handle = handle
        return remote

    def remote_class(self, handle: int, description: dict, decoder: "Decoder") -> type:
        """A stand-in for the other side's class. Its bases are the other side's classes or classes this
        side resolves by name: never one of this side's classes it refuses to resolve (the reference
        of the part being graded), which would lend the stand-in the reference's methods."""
        bases = tuple(
            base
            for base in (decoder.decode(node) for node in _items(description.get("bases", [])))
            if isinstance(base, type) and ("_bridge_handle" in vars(base) or self.resolvable(class_path(base)))
        )
        namespace: dict[str, Any] = {"__module__": str(description.get("module", "__main__")), "_bridge_handle": handle}
        for name, node in description.get("attributes", []):
            if isinstance(name, str) and not name.startswith("__") or name in ("__init__", "__call__"):
                namespace[name] = decoder.decode(node)
        name = str(description.get("name", "Class"))
        try:
            made = type(name if name.isidentifier() else "Class", bases or (object,), namespace)
        except TypeError:
            made = type(name if name.isidentifier() else "Class", (object,), namespace)
        made.__qualname__ = str(description.get("qualname", name))
        return made


@dataclasses.dataclass
class CallReply:
    """A served call's result, encoded with the changes made to its arguments."""

    result: Any
    decoder: "Decoder"
    grad_after: bool


def _signature(described: Any) -> inspect.Signature | None:
    if not isinstance(described, list):
        return None
    parameters = []
    try:
        for item in described:
            name, kind, has_default = item[0], inspect._ParameterKind(int(item[1])), bool(item[2])
            default = item[3] if has_default else inspect.Parameter.empty
            parameters.append(
                inspect.Parameter(
                    name, kind, default=default if isinstance(default, (int, float, str, bool, type(None))) else None
                )
            )
        return inspect.Signature(parameters)
    except (ValueError, TypeError, IndexError):
        return None


def _describe_signature(function: Callable[..., Any]) -> list | None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    described = []
    for parameter in signature.parameters.values():
        default = parameter.default
        simple = default is inspect.Parameter.empty or isinstance(default, (int, float, str, bool, type(None)))
        has_default = default is not inspect.Parameter.empty
        value = (
            default
            if has_default and simple and not (isinstance(default, float) and not math.isfinite(default))
            else None
        )
        described.append([parameter.name, int(parameter.kind), has_default, value])
    return described


def class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_class(path: str) -> type | None:
    """An already imported class by `module:qualname`; never imports anything."""
    import sys

    module_name, _, qualname = path.partition(":")
    target: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        if target is None or part.startswith("<"):
            return None
        target = getattr(target, part, None)
    return target if isinstance(target, type) else None


class Encoder:
    """Turns a value into JSON-able nodes and raw tensor buffers; remembers what it sent."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.tensor_meta: list[dict] = []
        self.buffers: list[bytes] = []
        self.tensor_ids: dict[int, int] = {}
        self.module_ids: dict[int, int] = {}
        self.sent_tensors: list[torch.Tensor] = []
        self.sent_modules: list[nn.Module] = []
        self.object_ids: dict[int, int] = {}
        self.sent_objects: list[Any] = []

    def encode(self, value: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise BridgeError("a value nested too deeply to send")
        if isinstance(value, CallReply):
            return self._call_reply(value)
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            return value if abs(value) < 2**63 else {"bigint": str(value)}
        if isinstance(value, float):
            return value if math.isfinite(value) else {"float": repr(value)}
        if isinstance(value, torch.Tensor):
            return {"tensor": self._tensor(value)}
        if isinstance(value, torch.dtype):
            return {"dtype": str(value).removeprefix("torch.")}
        if isinstance(value, torch.device):
            return {"device": value.type}
        if isinstance(value, torch.Size):
            return {"tuple": list(value)}
        if isinstance(value, slice):
            return {
                "slice": [
                    self.encode(value.start, depth + 1),
                    self.encode(value.stop, depth + 1),
                    self.encode(value.step, depth + 1),
                ]
            }
        if value is Ellipsis:
            return {"ellipsis": True}
        if isinstance(value, complex):
            return {"complex": [value.real, value.imag]}
        if _is_numpy(value):
            return self._numpy(value, depth)
        if isinstance(value, tuple) and hasattr(value, "_fields"):
            return {
                "namedtuple": type(value).__name__,
                "fields": list(value._fields),
                "values": [self.encode(item, depth + 1) for item in value],
            }
        if isinstance(value, (list, tuple)):
            return {"list" if isinstance(value, list) else "tuple": [self.encode(item, depth + 1) for item in value]}
        if isinstance(value, dict) and type(value) in (dict, OrderedDict):
            return {
                "dict": [[self.encode(key, depth + 1), self.encode(item, depth + 1)] for key, item in value.items()]
            }
        if isinstance(value, (set, frozenset)):
            return {"set": [self.encode(item, depth + 1) for item in value]}
        if isinstance(value, range):
            return {"range": [value.start, value.stop, value.step]}
        if isinstance(value, types.SimpleNamespace) or dataclasses.is_dataclass(value) and not isinstance(value, type):
            if id(value) in self.object_ids:
                return {"same_object": self.object_ids[id(value)]}
            index = self.object_ids[id(value)] = len(self.sent_objects)
            self.sent_objects.append(value)
            if isinstance(value, types.SimpleNamespace):
                return {
                    "namespace": [[key, self.encode(item, depth + 1)] for key, item in vars(value).items()],
                    "object": index,
                }
            return self._dataclass(value, depth) | {"object": index}
        if isinstance(value, nn.Module) and type(value).__name__ == "TransformerBridge":
            return self._palindrome_model(value)
        if isinstance(value, nn.Module):
            return self._module(value, depth)
        if isinstance(value, type):
            return self._class(value, depth)
        return self._by_handle(value)

    def _tensor(self, tensor: torch.Tensor) -> int:
        index = self.tensor_ids.get(id(tensor))
        if index is not None:
            return index
        index = self.tensor_ids[id(tensor)] = len(self.tensor_meta)
        self.sent_tensors.append(tensor)
        meta = {
            "dtype": str(tensor.dtype).removeprefix("torch."),
            "shape": list(tensor.shape),
            "grad": bool(tensor.requires_grad),
            "leaf": bool(tensor.is_leaf),
            "parameter": isinstance(tensor, nn.Parameter),
            "device": tensor.device.type,
        }
        if meta["dtype"] not in DTYPES or tensor.is_sparse:
            raise BridgeError(f"cannot send a {tensor.dtype} tensor")
        if tensor.device.type != "meta":
            flat = torch.empty(tensor.numel(), dtype=tensor.dtype)
            flat.copy_(tensor.detach().to("cpu").reshape(-1))  # a fresh buffer: views and odd strides included
            meta["buffer"] = len(self.buffers)
            self.buffers.append(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        self.tensor_meta.append(meta)
        return index

    def _numpy(self, value: Any, depth: int) -> dict:
        import numpy

        if isinstance(value, numpy.generic):
            return {"npscalar": self.encode(value.item(), depth + 1)}
        if value.dtype == object:
            return {"list": [self.encode(item, depth + 1) for item in value.tolist()]}
        return {"ndarray": self._tensor(torch.from_numpy(numpy.ascontiguousarray(value)))}

    def _dataclass(self, value: Any, depth: int) -> dict:
        fields = [
            [field.name, self.encode(getattr(value, field.name), depth + 1)]
            for field in dataclasses.fields(value)
            if hasattr(value, field.name)
        ]
        return {
            "dataclass": self._class(type(value), depth + 1),
            "name": type(value).__name__,
            "fields": fields,
            "frozen": type(value).__dataclass_params__.frozen,
        }

    def _module(self, module: nn.Module, depth: int) -> dict:
        index = self.module_ids.get(id(module))
        if index is not None:
            return {"same_module": index}
        index = self.module_ids[id(module)] = len(self.sent_modules)
        self.sent_modules.append(module)
        return {"module": index, "cls": self._class(type(module), depth + 1), "state": self.module_state(module, depth)}

    def _palindrome_model(self, model: nn.Module) -> dict:
        """The workbook's transformer goes as its weights; the other side rebuilds it with the same code."""
        state = [
            [name, {"tensor": self._tensor(tensor)}]
            for name, tensor in (*model.named_parameters(), *model.named_buffers())
        ]
        return {"palindrome_model": state, "training": bool(model.training)}

    def module_state(self, module: nn.Module, depth: int) -> dict:
        if "_parameters" not in vars(module):
            return {
                "initialised": False,
                "attributes": [[key, self.encode(item, depth + 1)] for key, item in vars(module).items()],
            }
        return {
            "initialised": True,
            "training": bool(module.training),
            **{
                key: [[name, self.encode(item, depth + 1)] for name, item in vars(module)[key].items()]
                for key in MODULE_STATE
            },
            "attributes": [
                [key, self.encode(item, depth + 1)] for key, item in vars(module).items() if key not in TORCH_INTERNALS
            ],
        }

    def _class(self, cls: type, depth: int) -> dict:
        if hasattr(cls, "_bridge_origin"):
            return cls._bridge_origin
        if cls.__dict__.get("_bridge_handle") is not None and cls in self.peer.proxies.values():
            return {"own": cls.__dict__["_bridge_handle"]}
        path = class_path(cls)
        if self.peer.resolvable(path) or cls.__module__.startswith(("part_utils.", "tests.")):
            token = self.peer._new_id()
            self.peer.tokens[token] = cls
            return {"path": path, "methods": self._methods(cls), "token": token}
        return self._by_handle(cls)

    def _methods(self, cls: type) -> list:
        """The callable members a mirror of `cls` offers on the other side (the grader's reference classes only)."""
        if not cls.__module__.startswith(("part_utils.", "tests.")):
            return []
        methods, seen = [], set()
        for klass in cls.__mro__:
            if klass.__module__.startswith(("torch", "builtins")):
                break
            for name, member in vars(klass).items():
                if name in seen or (name.startswith("__") and name not in ("__init__", "__call__")):
                    continue
                seen.add(name)
                if name in self.peer.exercise_names:
                    methods.append([name, "learner", 0])
                elif isinstance(member, property) and member.fget is not None:
                    methods.append([name, "property", self.export_handle(_MethodCaller(cls, name, "property"))])
                elif inspect.isfunction(member):
                    methods.append([name, "function", self.export_handle(_MethodCaller(cls, name, "function"))])
                elif isinstance(member, (staticmethod, classmethod)):
                    methods.append([name, "static", self.export_handle(_MethodCaller(cls, name, "static"))])
        return methods

    def export_handle(self, value: object) -> int:
        return self.peer.export(value)

    def _by_handle(self, value: Any) -> dict:
        owner_handle = getattr(value, "_bridge_handle", None)
        if owner_handle is not None and self.peer.proxies.get(owner_handle) is value:
            return {"own": owner_handle}
        if not self.peer.exportable(value):
            return {"opaque": type(value).__name__}
        handle = self.peer.export(value)
        if isinstance(value, type):
            return {"ref": handle, "class": self._describe_class(value)}
        if callable(value):
            doc = getattr(value, "__doc__", None)
            return {
                "ref": handle,
                "function": {
                    "name": getattr(value, "__name__", type(value).__name__),
                    "qualname": getattr(value, "__qualname__", ""),
                    "module": getattr(value, "__module__", "__main__"),
                    "signature": _describe_signature(value),
                    "doc": doc if isinstance(doc, str) else None,
                },
            }
        return {"opaque": type(value).__name__}

    def _describe_class(self, cls: type) -> dict:
        attributes = []
        for name, member in vars(cls).items():
            hidden = name in ("__dict__", "__weakref__", "__module__", "__qualname__", "__doc__", "_abc_impl")
            if hidden or name.startswith("_bridge"):
                continue
            if isinstance(member, property):
                attributes.append([name, {"property": [self.encode(member.fget), self.encode(member.fset)]}])
            elif isinstance(member, staticmethod):
                attributes.append([name, {"staticmethod": self.encode(member.__func__)}])
            elif isinstance(member, classmethod):
                attributes.append([name, {"staticmethod": self.encode(getattr(cls, name))}])
            else:
                attributes.append([name, self.encode(member, 1)])
        if issubclass(cls, torch.autograd.Function):
            attributes.append(["apply", {"staticmethod": self.encode(cls.apply)}])
        return {
            "name": cls.__name__,
            "qualname": cls.__qualname__,
            "module": cls.__module__,
            "attributes": attributes,
            "bases": [self._class(base, 1) for base in cls.__bases__],
        }

    def _call_reply(self, reply: CallReply) -> dict:
        decoder = reply.decoder
        result = self.encode(reply.result)
        in_result = len(self.tensor_meta)
        changed = [[index, self.encode(tensor)] for index, tensor in enumerate(decoder.given) if decoder.changed(index)]
        modules = [[index, self._state_after(module, decoder)] for index, module in enumerate(decoder.modules)]
        outputs = [index for index, meta in enumerate(self.tensor_meta[:in_result]) if _differentiable(meta)]
        record = _CallRecord(
            [leaf for leaf in decoder.leaves if leaf is not None], [self.sent_tensors[index] for index in outputs]
        )
        call = self.peer._new_id()
        self.peer.calls[call] = record
        return {
            "result": result,
            "changed": changed,
            "modules": modules,
            "grad_after": reply.grad_after,
            "call": call,
            "outputs": outputs,
        }

    def _state_after(self, module: nn.Module, decoder: "Decoder") -> dict:
        """A module's state after a call, naming the objects it still shares with what was received."""
        same_tensor = {id(tensor): index for index, tensor in enumerate(decoder.given) if tensor is not None}
        same_module = {id(item): index for index, item in enumerate(decoder.modules)}
        same_object = {id(item): index for index, item in decoder.objects.items()}

        def node(item: Any) -> Any:
            if id(item) in same_object and not isinstance(item, (torch.Tensor, nn.Module)):
                return {"sent_object": same_object[id(item)]}
            if isinstance(item, torch.Tensor) and id(item) in same_tensor:
                return {"same": same_tensor[id(item)]}
            if isinstance(item, nn.Module) and id(item) in same_module:
                return {"same_module": same_module[id(item)]}
            return self.encode(item, 1)

        if "_parameters" not in vars(module):
            return {"initialised": False, "attributes": [[key, node(item)] for key, item in vars(module).items()]}
        return {
            "initialised": True,
            "training": bool(module.training),
            **{key: [[name, node(item)] for name, item in vars(module)[key].items()] for key in MODULE_STATE},
            "attributes": [[key, node(item)] for key, item in vars(module).items() if key not in TORCH_INTERNALS],
        }


class _MethodCaller:
    """Runs a method of one of the grader's classes for a mirror on the other side, on a copy of `self`
    (never one of the methods learners write in the part being graded: mirrors use the learner's own)."""

    def __init__(self, cls: type, name: str, kind: str) -> None:
        self.cls, self.name, self.kind = cls, name, kind
        self.__name__ = name
        self.__module__ = "tooling.grading"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        member = inspect.getattr_static(self.cls, self.name)
        if self.kind == "property":
            return member.fget(*args)
        return getattr(self.cls, self.name)(*args, **kwargs) if self.kind == "static" else member(*args, **kwargs)


def _differentiable(meta: dict) -> bool:
    return bool(meta["grad"]) and meta["dtype"].startswith(("float", "bfloat", "complex"))


def _write_back(original: torch.Tensor, now: Any) -> None:
    """Give the caller's tensor the value the callee's copy ended with (an in-place change)."""
    if not isinstance(now, torch.Tensor) or now.dtype != original.dtype:
        raise BridgeError("a changed tensor of another type")
    if now.shape != original.shape:
        original.data = now.detach().clone()
    elif not torch.equal(
        torch.nan_to_num(original.detach()) if original.is_floating_point() else original.detach(),
        torch.nan_to_num(now.detach()) if now.is_floating_point() else now.detach(),
    ):
        original.copy_(now)
    if original.is_leaf and original.requires_grad != now.requires_grad:
        original.requires_grad_(now.requires_grad)


def _substitute(value: Any, replacements: dict[int, torch.Tensor], depth: int = 0) -> Any:
    """`value` with the tensors in `replacements` swapped in, wherever they sit in lists, tuples, dicts or
    dataclasses."""
    if isinstance(value, torch.Tensor):
        return replacements.get(id(value), value)
    if depth > MAX_DEPTH:
        return value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_substitute(item, replacements, depth + 1) for item in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_substitute(item, replacements, depth + 1) for item in value)
    if isinstance(value, dict):
        return {key: _substitute(item, replacements, depth + 1) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            if hasattr(value, field.name):
                object.__setattr__(value, field.name, _substitute(getattr(value, field.name), replacements, depth + 1))
    return value


def _is_numpy(value: Any) -> bool:
    return (
        type(value).__module__ == "numpy"
        and type(value).__name__ in ("ndarray",)
        or type(value).__module__ == "numpy"
        and hasattr(value, "item")
        and not isinstance(value, type)
    )


class Decoder:
    """Rebuilds values from nodes; for a served call, remembers what it handed to learner code."""

    def __init__(self, peer: Peer, meta: Any, buffers: list[bytes]) -> None:
        self.peer = peer
        self.meta = meta if isinstance(meta, list) else []
        self.buffers = buffers
        self.tensors: dict[int, torch.Tensor] = {}
        self.given: list[torch.Tensor | None] = [None] * len(self.meta)
        self.leaves: list[torch.Tensor | None] = [None] * len(self.meta)
        self.originals: list[torch.Tensor | None] = [None] * len(self.meta)
        self.modules: list[nn.Module] = []
        self.objects: dict[int, Any] = {}

    def decode(self, node: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise BridgeError("a value nested too deeply")
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            raise BridgeError("malformed value")
        if not isinstance(node, dict) or len(node) == 0:
            raise BridgeError("malformed value")
        kind = next(iter(node))
        value = node[kind]
        if kind == "tensor":
            return self.tensor(value)
        if kind == "ndarray":
            return self.tensor(value).detach().numpy()
        if kind == "list":
            return [self.decode(item, depth + 1) for item in _items(value)]
        if kind == "tuple":
            return tuple(self.decode(item, depth + 1) for item in _items(value))
        if kind == "dict":
            return {
                _hashable(self.decode(key, depth + 1)): self.decode(item, depth + 1)
                for key, item in (_pair(entry) for entry in _items(value))
            }
        if kind == "set":
            return {_hashable(self.decode(item, depth + 1)) for item in _items(value)}
        if kind == "namedtuple":
            fields = [str(field) for field in _items(node.get("fields"))]
            made = namedtuple(
                str(value) if str(value).isidentifier() else "Record",
                [f if f.isidentifier() else f"field{i}" for i, f in enumerate(fields)],
                rename=True,
            )
            return made(*[self.decode(item, depth + 1) for item in _items(node.get("values"))][: len(fields)])
        if kind == "namespace":
            made = types.SimpleNamespace(
                **{str(key): self.decode(item, depth + 1) for key, item in (_pair(entry) for entry in _items(value))}
            )
            return self._remember(node, made)
        if kind == "same_object":
            if value not in self.objects:
                raise BridgeError("no such object")
            return self.objects[value]
        if kind == "float":
            return float(value) if value in ("nan", "inf", "-inf") else math.nan
        if kind == "bigint":
            return int(str(value)[:400])
        if kind == "complex":
            return complex(*[float(part) for part in _items(value)][:2])
        if kind == "npscalar":
            return self.decode(value, depth + 1)
        if kind == "dtype":
            if value not in DTYPES:
                raise BridgeError("unknown dtype")
            return DTYPES[value]
        if kind == "device":
            return torch.device("meta" if value == "meta" else "cpu")
        if kind == "slice":
            return slice(*[self.decode(item, depth + 1) for item in _items(value)][:3])
        if kind == "ellipsis":
            return Ellipsis
        if kind == "range":
            return range(*[int(item) for item in _items(value)][:3])
        if kind == "dataclass":
            return self._dataclass(node, depth)
        if kind in ("module", "same_module"):
            return self._module(node, depth)
        if kind == "palindrome_model":
            return self._palindrome_model(value, bool(node.get("training")))
        if kind == "path":
            return self._class_from_path(node)
        if kind == "own":
            if value not in self.peer.exports:
                raise BridgeError("no such object")
            return self.peer.exports[value]
        if kind == "ref":
            return self._proxy(node)
        if kind in ("property", "staticmethod"):
            return self._member(kind, value)
        if kind == "opaque":
            return None
        raise BridgeError(f"unknown kind of value {kind!r}")

    def tensor(self, index: Any) -> torch.Tensor:
        if not isinstance(index, int) or not 0 <= index < len(self.meta):
            raise BridgeError("no such tensor")
        if index in self.tensors:
            return self.tensors[index]
        meta = self.meta[index]
        dtype = DTYPES.get(meta.get("dtype")) if isinstance(meta, dict) else None
        shape = meta.get("shape") if isinstance(meta, dict) else None
        if (
            dtype is None
            or not isinstance(shape, list)
            or not all(isinstance(size, int) and size >= 0 for size in shape)
        ):
            raise BridgeError("malformed tensor")
        if meta.get("device") == "meta":
            tensor = torch.empty(shape, dtype=dtype, device="meta")
        else:
            buffer = (
                self.buffers[meta["buffer"]]
                if isinstance(meta.get("buffer"), int) and 0 <= meta["buffer"] < len(self.buffers)
                else None
            )
            itemsize = torch.empty((), dtype=dtype).element_size()
            if buffer is None or len(buffer) != math.prod(shape) * itemsize:
                raise BridgeError("a tensor whose data does not match its shape")
            tensor = (
                torch.frombuffer(bytearray(buffer), dtype=dtype).reshape(shape)
                if buffer
                else torch.empty(shape, dtype=dtype)
            )
        wants_grad = bool(meta.get("grad")) and (dtype.is_floating_point or dtype.is_complex)
        leaf: torch.Tensor | None = None
        if meta.get("parameter"):
            tensor = leaf = nn.Parameter(tensor, requires_grad=wants_grad)
        elif wants_grad:
            leaf = tensor.requires_grad_(True)
            tensor = leaf if meta.get("leaf") else leaf.clone()
        self.tensors[index], self.given[index], self.leaves[index] = tensor, tensor, leaf if wants_grad else None
        if tensor.device.type != "meta":
            self.originals[index] = tensor.detach().clone()
        return tensor

    def changed(self, index: int) -> bool:
        """Whether learner code changed this tensor's values in place (through `.data` too, which the version
        counter misses)."""
        given, original = self.given[index], self.originals[index]
        if given is None or original is None:
            return False
        if given.requires_grad != bool(self.meta[index].get("grad")) and given.is_leaf:
            return True
        now = given.detach()
        if now.shape != original.shape or now.dtype != original.dtype:
            return True
        if now.is_floating_point():
            now, original = torch.nan_to_num(now, nan=0.5), torch.nan_to_num(original, nan=0.5)
        return not torch.equal(now, original)

    def _palindrome_model(self, state: Any, training: bool) -> nn.Module:
        from part_utils.palindromes.model import build_palindrome_model

        model = build_palindrome_model(device=torch.device("cpu")).train(training)
        own = dict((*model.named_parameters(), *model.named_buffers()))
        for name, node in (_pair(entry) for entry in _items(state)):
            index = node.get("tensor") if isinstance(node, dict) else None
            target, sent = own.get(str(name)), self.tensor(index)
            if target is None or target.shape != sent.shape:
                raise BridgeError(f"the model has no tensor {str(name)[:80]} of that shape")
            with torch.no_grad():
                target.copy_(sent)
            target.requires_grad_(sent.requires_grad)
            self.given[index], self.originals[index], self.leaves[index] = target, target.detach().clone(), None
        return model

    def _class_from_path(self, node: dict) -> type:
        path = str(node.get("path"))
        sent = self.peer.tokens.get(node.get("token")) if isinstance(node.get("token"), int) else None
        if sent is not None and class_path(sent) == path:
            return sent
        cls = resolve_class(path) if self.peer.resolvable(path) else None
        if cls is not None:
            return cls
        return self._mirror(path, node.get("methods"), node.get("token"))

    def _mirror(self, path: str, methods: Any, token: Any) -> type:
        """A stand-in for a class this side may not import: the same name, each method a call to the other side."""
        origin = {"path": path, "methods": methods or [], "token": token if isinstance(token, int) else None}
        namespace: dict[str, Any] = {"__module__": path.partition(":")[0], "_bridge_origin": origin}
        for entry in _items(methods or []):
            name, kind, handle = _triple(entry)
            if kind == "learner":
                own = self._learner_method(path, name)
                if own is not None:
                    namespace[name] = own
                continue
            function = self.peer.remote_function(handle, {"name": name, "module": namespace["__module__"]})
            namespace[name] = (
                property(function) if kind == "property" else staticmethod(function) if kind == "static" else function
            )
        name = path.rpartition(".")[2].rpartition(":")[2] or "Mirror"
        return type(name if name.isidentifier() else "Mirror", (nn.Module,), namespace)

    def _learner_method(self, path: str, name: str) -> Any:
        """The learner's own version of an exercise method, from their class of the same name (if any)."""
        namespace = self.peer.learner_namespace or {}
        owner = namespace.get(path.rpartition(".")[2].rpartition(":")[2])
        return inspect.getattr_static(owner, name, None) if isinstance(owner, type) else None

    def _proxy(self, node: dict) -> Any:
        handle = node.get("ref")
        if not isinstance(handle, int):
            raise BridgeError("malformed handle")
        if handle in self.peer.proxies:
            return self.peer.proxies[handle]
        if isinstance(node.get("class"), dict):
            proxy: Any = None
            self.peer.proxies[handle] = None  # a class whose methods mention it
            proxy = self.peer.remote_class(handle, node["class"], self)
        elif isinstance(node.get("function"), dict):
            proxy = self.peer.remote_function(handle, node["function"])
        else:
            raise BridgeError("malformed handle")
        self.peer.proxies[handle] = proxy
        return proxy

    def _member(self, kind: str, value: Any) -> Any:
        if kind == "property":
            getter, setter = (self.decode(item) for item in _items(value)[:2])
            return property(getter if callable(getter) else None, setter if callable(setter) else None)
        function = self.decode(value)
        return staticmethod(function) if callable(function) else None

    def _dataclass(self, node: dict, depth: int) -> Any:
        cls = self.decode(node.get("dataclass"), depth + 1)
        fields = {
            str(key): self.decode(item, depth + 1)
            for key, item in (_pair(entry) for entry in _items(node.get("fields")))
        }
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            name = str(node.get("name", "Record"))
            cls = dataclasses.make_dataclass(
                name if name.isidentifier() else "Record",
                [key for key in fields if key.isidentifier()],
                frozen=bool(node.get("frozen")),
            )
        instance = object.__new__(cls)
        for key, item in fields.items():
            object.__setattr__(instance, key, item)
        return self._remember(node, instance)

    def _remember(self, node: dict, made: Any) -> Any:
        if isinstance(node.get("object"), int):
            self.objects[node["object"]] = made
        return made

    def _module(self, node: dict, depth: int) -> nn.Module:
        if "same_module" in node:
            index = node["same_module"]
            if not isinstance(index, int) or not 0 <= index < len(self.modules):
                raise BridgeError("no such module")
            return self.modules[index]
        cls = self.decode(node.get("cls"), depth + 1)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            cls = type(getattr(cls, "__name__", "Module"), (nn.Module,), {})
        module = cls.__new__(cls)
        self.modules.append(module)
        self.apply_state(module, node.get("state"), depth)
        return module

    def apply_state(self, module: nn.Module, state: Any, depth: int = 0) -> None:
        """Give `module` the state described (a fresh module, or the caller's after a call changed it)."""
        if not isinstance(state, dict):
            raise BridgeError("malformed module")
        if not state.get("initialised"):
            for key, item in (_pair(entry) for entry in _items(state.get("attributes"))):
                object.__setattr__(module, str(key), self._state_item(item, depth))
            return
        if "_parameters" not in vars(module):
            nn.Module.__init__(module)
        for key in MODULE_STATE:
            entries = OrderedDict(
                (str(name), self._state_item(item, depth))
                for name, item in (_pair(entry) for entry in _items(state.get(key)))
            )
            vars(module)[key].clear()
            vars(module)[key].update(entries)
        object.__setattr__(module, "training", bool(state.get("training")))
        attributes = {
            str(key): self._state_item(item, depth)
            for key, item in (_pair(entry) for entry in _items(state.get("attributes")))
        }
        for key in [key for key in vars(module) if key not in TORCH_INTERNALS and key not in attributes]:
            delattr(module, key)
        for key, item in attributes.items():
            if vars(module).get(key, _MISSING) is not item:
                object.__setattr__(module, key, item)

    def _state_item(self, node: Any, depth: int) -> Any:
        if isinstance(node, dict) and "same" in node:
            return self.sent_tensor(node["same"])
        if isinstance(node, dict) and "sent_object" in node:
            index = node["sent_object"]
            if self.sent_objects is None or not isinstance(index, int) or not 0 <= index < len(self.sent_objects):
                raise BridgeError("no such object")
            return self.sent_objects[index]
        if isinstance(node, dict) and "same_module" in node and self.sent_modules is not None:
            index = node["same_module"]
            if not isinstance(index, int) or not 0 <= index < len(self.sent_modules):
                raise BridgeError("no such module")
            return self.sent_modules[index]
        return self.decode(node, depth + 1)

    sent: list[torch.Tensor] | None = None
    sent_modules: list[nn.Module] | None = None
    sent_objects: list[Any] | None = None

    def sent_tensor(self, index: Any) -> torch.Tensor:
        if self.sent is None or not isinstance(index, int) or not 0 <= index < len(self.sent):
            raise BridgeError("no such tensor")
        return self.sent[index]


_MISSING = object()


def _items(value: Any) -> list:
    if not isinstance(value, list):
        raise BridgeError("malformed value")
    return value


def _pair(entry: Any) -> tuple[Any, Any]:
    if not isinstance(entry, list) or len(entry) != 2:
        raise BridgeError("malformed value")
    return entry[0], entry[1]


def _triple(entry: Any) -> tuple[str, str, int]:
    if not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[2], int):
        raise BridgeError("malformed value")
    return str(entry[0]), str(entry[1]), entry[2]


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError as error:
        raise BridgeError("an unhashable key") from error
    return value
