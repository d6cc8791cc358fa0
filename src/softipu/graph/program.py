"""Programs: the control flow that runs compute sets, copies and host transfers.

A closed set of node kinds (``ProgramKind``); interpreters (the engine, the reference engine,
the verifier) have one method per kind. Every node records the user's source line.

>>> from softipu import program as P
>>> seq = P.Sequence()
>>> seq.add(P.Repeat(3, P.Sequence()))
>>> len(seq.programs)
1
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from softipu.debug import SourceLocation, caller_location
from softipu.dtypes import uint32
from softipu.errors import ProgramError
from softipu.graph.remote import RemoteBuffer
from softipu.graph.streams import DataStream
from softipu.graph.tensor import Tensor

if TYPE_CHECKING:
    from softipu.graph.graph import ComputeSet, Function

__all__ = [
    "ProgramKind",
    "Program",
    "Sequence",
    "Execute",
    "Copy",
    "Repeat",
    "RepeatWhileTrue",
    "RepeatWhileFalse",
    "If",
    "Switch",
    "Call",
    "WriteUndef",
    "PrintTensor",
    "Sync",
    "SyncType",
    "CycleCount",
    "CrossReplicaCopy",
    "RemoteCopy",
    "walk",
]


class ProgramKind(enum.Enum):
    SEQUENCE = "Sequence"
    EXECUTE = "Execute"
    COPY = "Copy"
    REPEAT = "Repeat"
    REPEAT_WHILE = "RepeatWhile"
    IF = "If"
    SWITCH = "Switch"
    CALL = "Call"
    WRITE_UNDEF = "WriteUndef"
    PRINT_TENSOR = "PrintTensor"
    SYNC = "Sync"
    CYCLE_COUNT = "CycleCount"
    CROSS_REPLICA_COPY = "CrossReplicaCopy"
    REMOTE_COPY = "RemoteCopy"


class SyncType(enum.Enum):
    INTERNAL = "internal"  # all tiles of one IPU
    EXTERNAL = "external"  # all IPUs of the replica
    GLOBAL = "global"  # all IPUs of all replicas


class Program:
    """Base of every program node."""

    kind: ClassVar[ProgramKind]
    location: SourceLocation

    def children(self) -> tuple[Program, ...]:
        return ()


Endpoint = Tensor | DataStream


class Sequence(Program):
    """Run programs in order. Library ops append to it with ``add``.

    ``Sequence(a, b)`` and ``Sequence([a, b])`` are the same.
    """

    kind = ProgramKind.SEQUENCE
    __slots__ = ("programs", "location", "name")

    def __init__(self, *programs: Program | Iterable[Program], name: str = "") -> None:
        if len(programs) == 1 and not isinstance(programs[0], Program):
            programs = tuple(programs[0])  # type: ignore[arg-type]
        self.programs: list[Program] = []
        self.location = caller_location()
        self.name = name
        for p in programs:
            self.add(p)  # type: ignore[arg-type]

    def add(self, program: Program) -> None:
        if not isinstance(program, Program):
            raise ProgramError(
                f"Sequence.add got {type(program).__name__}, not a program{_at(self)}; wrap "
                "compute sets in program.Execute(cs)"
            )
        self.programs.append(program)

    def children(self) -> tuple[Program, ...]:
        return tuple(self.programs)

    def __repr__(self) -> str:
        return f"Sequence({len(self.programs)} programs)"


@dataclass(frozen=True, slots=True, eq=False)
class Execute(Program):
    """Run every vertex of a compute set: one BSP superstep (sync, exchange, compute)."""

    compute_set: ComputeSet
    location: SourceLocation = field(default_factory=caller_location, compare=False)
    kind: ClassVar[ProgramKind] = ProgramKind.EXECUTE


@dataclass(frozen=True, slots=True, eq=False)
class Copy(Program):
    """Copy a tensor to a tensor of the same shape and dtype, or to/from a host stream."""

    src: Endpoint
    dst: Endpoint
    location: SourceLocation = field(default_factory=caller_location, compare=False)
    kind: ClassVar[ProgramKind] = ProgramKind.COPY

    def __post_init__(self) -> None:
        for end in (self.src, self.dst):
            if not isinstance(end, (Tensor, DataStream)):
                raise ProgramError(
                    f"Copy end points must be tensors or data streams, got "
                    f"{type(end).__name__}{_at(self)}"
                )
        if isinstance(self.src, DataStream) and isinstance(self.dst, DataStream):
            raise ProgramError(f"Copy between two streams{_at(self)}: one end must be a tensor")


@dataclass(frozen=True, slots=True, eq=False)
class Repeat(Program):
    """Run ``body`` ``count`` times."""

    count: int
    body: Program
    location: SourceLocation = field(default_factory=caller_location, compare=False)
    kind: ClassVar[ProgramKind] = ProgramKind.REPEAT

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or not 0 <= self.count < 2**32:  # Poplar's: an unsigned
            raise ProgramError(f"Repeat count must be an int in 0..2**32-1, got {self.count!r}{_at(self)}")
        _check_program(self.body, "Repeat body", self)

    def children(self) -> tuple[Program, ...]:
        return (self.body,)


@dataclass(frozen=True, slots=True, eq=False)
class RepeatWhileTrue(Program):
    """Run ``condition``, then ``body`` while the 1-element ``predicate`` is non-zero."""

    condition: Program
    predicate: Tensor
    body: Program
    location: SourceLocation = field(default_factory=caller_location, compare=False)
    kind: ClassVar[ProgramKind] = ProgramKind.REPEAT_WHILE
    run_while: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_program(self.condition, "loop condition", self)
        _check_program(self.body, "loop body", self)
        _check_scalar(self.predicate, "loop predicate", self)

    def children(self) -> tuple[Program, ...]:
        return (self.condition, self.body)


class RepeatWhileFalse(RepeatWhileTrue):
    """Run ``condition``, then ``body`` while the 1-element ``predicate`` is zero."""

    __slots__ = ()
    run_while: ClassVar[bool] = False


@dataclass(frozen=True, slots=True, eq=False)
class If(Program):
    """Run ``then`` when the 1-element ``predicate`` is non-zero, else ``else_``."""

    predicate: Tensor
    then: Program
    else_: Program | None = None
    location: SourceLocation = field(default_factory=caller_location, compare=False)
    kind: ClassVar[ProgramKind] = ProgramKind.IF

    def __post_init__(self) -> None:
        _check_scalar(self.predicate, "If predicate", self)
        _check_program(self.then, "If branch", self)
        if self.else_ is not None:
            _check_program(self.else_, "If else branch", self)

    def children(self) -> tuple[Program, ...]:
        return (self.then,) if self.else_ is None else (self.then, self.else_)


@dataclass(frozen=True, slots=True, eq=False)
class Switch(Program):
    """Run the case whose value equals the 1-element integer ``control``, else ``default``."""

    control: Tensor
    cases: Mapping[int, Program]
    default: Program | None = None
    location: SourceLocation = field(default_factory=caller_location, compare=False)
    kind: ClassVar[ProgramKind] = ProgramKind.SWITCH

    def __post_init__(self) -> None:
        _check_scalar(self.control, "Switch control", self)
        try:
            cases = dict(self.cases.items() if isinstance(self.cases, Mapping) else self.cases)
        except (TypeError, ValueError):
            raise ProgramError(f"Switch cases are a dict of int -> program, got {self.cases!r:.80}"
                               f"{_at(self)}") from None
        for value, prog in cases.items():
            if not isinstance(value, int):
                raise ProgramError(f"Switch case values must be ints, got {value!r}{_at(self)}")
            _check_program(prog, f"Switch case {value}", self)
        if self.default is not None:
            _check_program(self.default, "Switch default", self)
        object.__setattr__(self, "cases", cases)

    def children(self) -> tuple[Program, ...]:
        rest = () if self.default is None else (self.default,)
        return tuple(self.cases.values()) + rest


@dataclass(frozen=True, slots=True, eq=False)
class Call(Program):
    """Run a function made with ``graph.add_function(program)``; its code exists once."""

    function: Function
    location: SourceLocation = field(default_factory=caller_location, compare=False)
    kind: ClassVar[ProgramKind] = ProgramKind.CALL


@dataclass(frozen=True, slots=True, eq=False)
class WriteUndef(Program):
    """Mark a tensor's contents as dead from here on (frees it for liveness)."""

    tensor: Tensor
    location: SourceLocation = field(default_factory=caller_location, compare=False)
    kind: ClassVar[ProgramKind] = ProgramKind.WRITE_UNDEF


@dataclass(frozen=True, slots=True, eq=False)
class PrintTensor(Program):
    """Print a tensor's values on the host when the program runs."""

    tensor: Tensor
    title: str = ""
    location: SourceLocation = field(default_factory=caller_location, compare=False)
    kind: ClassVar[ProgramKind] = ProgramKind.PRINT_TENSOR

    def __post_init__(self) -> None:
        if isinstance(self.tensor, str) and isinstance(self.title, Tensor):  # Poplar's order
            title, tensor = self.tensor, self.title
            object.__setattr__(self, "tensor", tensor)
            object.__setattr__(self, "title", title)
        if not isinstance(self.tensor, Tensor):
            raise ProgramError(f"PrintTensor needs a tensor, got {type(self.tensor).__name__}{_at(self)}")


@dataclass(frozen=True, slots=True, eq=False)
class Sync(Program):
    """A barrier across tiles (INTERNAL), IPUs (EXTERNAL) or replicas (GLOBAL)."""

    sync_type: SyncType = SyncType.INTERNAL
    location: SourceLocation = field(default_factory=caller_location, compare=False)
    kind: ClassVar[ProgramKind] = ProgramKind.SYNC


@dataclass(frozen=True, slots=True, eq=False)
class CycleCount(Program):
    """Write the modeled cycles ``body`` took (or, without a body, the cycles since the engine
    loaded) into ``counter``: two uint32 words, low then high, like Poplar's cycle counters.

    Made by :func:`softipu.cycle_count` and :func:`softipu.cycle_stamp`.
    """

    counter: Tensor
    body: Program | None = None
    location: SourceLocation = field(default_factory=caller_location, compare=False)
    kind: ClassVar[ProgramKind] = ProgramKind.CYCLE_COUNT

    def __post_init__(self) -> None:
        if not isinstance(self.counter, Tensor) or self.counter.dtype != uint32 \
                or self.counter.shape != (2,):
            raise ProgramError(f"CycleCount needs a uint32 tensor of shape (2,){_at(self)}")
        if self.body is not None:
            _check_program(self.body, "CycleCount body", self)

    def children(self) -> tuple[Program, ...]:
        return () if self.body is None else (self.body,)


@dataclass(frozen=True, slots=True, eq=False)
class CrossReplicaCopy(Program):
    """Poplar's ``CrossReplicaCopy``: ``src`` of replica ``r`` is copied to ``dst`` of replica
    ``replica_map[r]``; replicas the map sends nothing to keep their ``dst``. ``alongside`` are
    more ``(src, dst, replica_map)`` transfers in the same exchange (a bidirectional ring's other
    direction), priced as one step. ``fault`` (a link ``(from, to)`` or a replica) is an injected
    failure: running the step raises naming it. Made by ``softipu.collectives``; the engine runs
    it along the replica axis of storage."""

    src: Tensor
    dst: Tensor
    replica_map: Mapping[int, int]
    fault: tuple[int, ...] | None = None
    alongside: tuple[tuple[Tensor, Tensor, Mapping[int, int]], ...] = ()
    location: SourceLocation = field(default_factory=caller_location, compare=False)
    kind: ClassVar[ProgramKind] = ProgramKind.CROSS_REPLICA_COPY

    def __post_init__(self) -> None:
        checked = []
        for src, dst, replica_map in ((self.src, self.dst, self.replica_map), *self.alongside):
            for end in (src, dst):
                if not isinstance(end, Tensor):
                    raise ProgramError(f"CrossReplicaCopy needs tensors, got {type(end).__name__}{_at(self)}")
            pairs = dict(replica_map)
            if len(set(pairs.values())) != len(pairs):
                raise ProgramError(f"CrossReplicaCopy{_at(self)}: two replicas copy to one destination")
            checked.append((src, dst, pairs))
        object.__setattr__(self, "replica_map", checked[0][2])
        object.__setattr__(self, "alongside", tuple(checked[1:]))

    @property
    def transfers(self) -> tuple[tuple[Tensor, Tensor, dict[int, int]], ...]:
        return ((self.src, self.dst, self.replica_map), *self.alongside)  # type: ignore[return-value]


@dataclass(frozen=True, slots=True, eq=False)
class RemoteCopy(Program):
    """Poplar's ``Copy(tensor, remoteBuffer, offset)`` and ``Copy(remoteBuffer, tensor, offset)``:
    one end a tensor of the buffer's row shape (or ``(n, *shape)`` for n rows), the other a
    :class:`~softipu.graph.remote.RemoteBuffer`; ``offset`` the row (an int) or an integer tensor
    of n rows read at run time, per replica."""

    src: Tensor | RemoteBuffer
    dst: Tensor | RemoteBuffer
    offset: Tensor | int = 0
    location: SourceLocation = field(default_factory=caller_location, compare=False)
    kind: ClassVar[ProgramKind] = ProgramKind.REMOTE_COPY

    def __post_init__(self) -> None:
        remote = [isinstance(e, RemoteBuffer) for e in (self.src, self.dst)]
        tensor = [isinstance(e, Tensor) for e in (self.src, self.dst)]
        if sorted(remote) != [False, True] or sorted(tensor) != [False, True]:
            raise ProgramError(f"RemoteCopy needs a tensor and a remote buffer, got "
                               f"{type(self.src).__name__} and {type(self.dst).__name__}{_at(self)}")
        if not isinstance(self.offset, (Tensor, int)):
            raise ProgramError(f"RemoteCopy offset must be an int or a tensor, got {self.offset!r}"
                               f"{_at(self)}")

    @property
    def tensor(self) -> Tensor:
        return self.dst if isinstance(self.dst, Tensor) else self.src  # type: ignore[return-value]

    @property
    def buffer(self) -> RemoteBuffer:
        return self.src if isinstance(self.src, RemoteBuffer) else self.dst  # type: ignore[return-value]


def walk(program: Program) -> Iterator[Program]:
    """Every node under ``program`` (itself first), depth first; functions are not entered."""
    stack = [program]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children()))


def _at(node: Program) -> str:
    loc = getattr(node, "location", None)
    return f" (at {loc})" if loc else ""


def _check_program(p: object, what: str, node: Program) -> None:
    if not isinstance(p, Program):
        raise ProgramError(f"{what} must be a program, got {type(p).__name__}{_at(node)}")


def _check_scalar(t: object, what: str, node: Program) -> None:
    if not isinstance(t, Tensor) or t.numel != 1:
        desc = f"tensor {t.name} of shape {t.shape}" if isinstance(t, Tensor) else type(t).__name__
        raise ProgramError(f"{what} must be a 1-element tensor, got {desc}{_at(node)}")
