"""Program nodes (``from softipu import program as P``); defined in ``softipu.graph.program``."""

from softipu.graph.program import (
    Call,
    Copy,
    CrossReplicaCopy,
    Execute,
    If,
    PrintTensor,
    Program,
    ProgramKind,
    RemoteCopy,
    Repeat,
    RepeatWhileFalse,
    RepeatWhileTrue,
    Sequence,
    Switch,
    Sync,
    SyncType,
    WriteUndef,
    walk,
)

__all__ = [
    "Call", "Copy", "CrossReplicaCopy", "Execute", "If", "PrintTensor", "Program", "ProgramKind",
    "RemoteCopy", "Repeat",
    "RepeatWhileFalse", "RepeatWhileTrue", "Sequence", "Switch", "Sync", "SyncType", "WriteUndef",
    "walk",
]
