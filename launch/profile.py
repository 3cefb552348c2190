"""Cluster profiles: what one SLURM cluster asks of a job (partition, QOS, account, node shape, time limit,
environment), validated like sweep files and turned into submitit's executor parameters.

Each array task of a submitted sweep is one whole node's worth of the profile (``gpus_per_node`` GPUs,
``cpus_per_node`` CPUs) running one private Ray cluster. The bundled profiles ship inside the package, in
``launch/profiles/``, and are named without a path (``--cluster leonardo``): ``leonardo`` (CINECA Leonardo
Booster) and ``local`` (the test cluster of ``slurm/testcluster.sh``). Anything with a ``/`` or a ``.yaml``/``.yml``
ending is a path to a profile of one's own (a copy of a bundled one, edited).
"""

from __future__ import annotations

import os
import re
import shlex
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PositiveInt, PrivateAttr, ValidationError, field_validator,
                      model_validator)

from launch.spec import SpecError

MAX_FILE_BYTES = 1 << 16
"""A profile is a screenful of YAML; anything larger is the wrong file."""

SBATCH_OWNED = {
    "partition": "partition", "p": "partition", "qos": "qos", "q": "qos", "account": "account", "A": "account",
    "time": "timeout_min", "t": "timeout_min", "nodes": "nodes", "N": "nodes", "gpus-per-node": "gpus_per_node",
    "gpus": "gpus_per_node", "G": "gpus_per_node", "cpus-per-task": "cpus_per_node", "c": "cpus_per_node",
    "ntasks-per-node": "nodes", "mem": "mem", "signal": "signal_delay_s", "requeue": "requeue",
    "no-requeue": "requeue", "array": "array_parallelism",
}
"""sbatch options a profile sets through its own fields (option → field): ``sbatch`` may not set them again."""


class ProfileError(SpecError):
    """A cluster profile that cannot be used; ``problems`` holds one line per problem (``FILE: field: …``)."""


class ClusterProfile(BaseModel):
    """One SLURM cluster as wconv uses it: every array task gets one node of this shape."""

    # strict: YAML's `yes` is a bool and "4" a string, neither is a count.
    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)

    name: str
    """Short name of the cluster (recorded with each submitted job)."""
    partition: str
    """SLURM partition (``sbatch --partition``)."""
    qos: Optional[str] = None
    """SLURM quality of service (``--qos``); None: the account's default."""
    account: Optional[str] = None
    """Account charged (``--account``); usually left out of the file and given by ``--account`` or ``account_env``."""
    account_env: str = "WCONV_ACCOUNT"
    """Environment variable read for the account when neither ``--account`` nor ``account`` gives one."""
    account_required: bool = False
    """The cluster refuses jobs without an account (e.g. CINECA: one per project, ``saldo -b`` lists yours)."""
    nodes: int = 1
    """Nodes per array task; wconv runs one private Ray cluster per task, so this is 1."""
    gpus_per_node: int = Field(ge=0)
    """GPUs per array task (``--gpus-per-node``); 0 for a CPU-only partition."""
    cpus_per_node: int = Field(ge=1)
    """CPUs of the task (``--cpus-per-task`` with one task per node); Ray is sized from them."""
    mem: Optional[str] = None
    """Memory per node as sbatch writes it (``480G``, ``64000M``; ``0`` is all of it); None: the partition's default."""
    timeout_min: int = Field(ge=1)
    """Wall-time limit of one task, in minutes; a task that reaches it is checkpointed and requeued."""
    max_timeout_min: Optional[int] = Field(None, ge=1)
    """The partition's wall-time limit, to refuse a longer ``timeout_min`` before submitting."""
    qos_max_timeout_min: dict[str, PositiveInt] = {}
    """Wall-time limit of each QOS that has one (minutes), e.g. ``{boost_qos_dbg: 30}``."""
    setup: list[str] = []
    """Shell lines run before the task (module loads, venv activation), after the ``env`` exports."""
    env: dict[str, str] = {}
    """Variables exported in the job, e.g. ``HF_HUB_OFFLINE: "1"`` where compute nodes have no internet."""
    array_parallelism: int = Field(256, ge=1)
    """At most this many array tasks of one sweep run at once (``--array=…%N``)."""
    signal_delay_s: int = Field(120, ge=0)
    """SLURM sends USR2 about this long before the time limit (``--signal=USR2@N``); submitit then checkpoints and
    requeues the task. It must cover stopping Ray and the last store writes; SLURM's timing is approximate (up to
    60 s early per sbatch's manual, or late until slurmctld's next time-limit check, every 30 s)."""
    max_num_timeout: int = Field(3, ge=0)
    """How many times submitit requeues a task that reached its time limit before giving up on it."""
    requeue: bool = True
    """Let SLURM requeue a task after a node failure or preemption (``--requeue``); False: ``--no-requeue``."""
    sbatch: dict[str, Union[bool, int, str]] = {}
    """Any other sbatch option (name without dashes → value; ``true`` for a flag), e.g. ``{exclusive: true}``."""
    single_node: bool = False
    """Every task runs on this same machine (the local test cluster): SQLite and /tmp are safe to share."""
    shared_roots: list[str] = []
    """Folders every compute node sees as the login node does (``$WORK``, ``$SCRATCH``; ``$VARS`` allowed)."""
    node_local_roots: list[str] = ["/tmp", "/var/tmp", "/dev/shm", "$TMPDIR"]
    """Folders compute nodes cannot see as the login node does (node-local disks, login-only areas)."""

    _source: str = PrivateAttr("<profile>")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError("must be letters, digits, '_', '-' or '.'")
        return v

    @field_validator("nodes")
    @classmethod
    def _one_node(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"must be 1, got {v}: each array task runs one private Ray cluster on one node; "
                             "ask for more tasks (workers), not more nodes per task")
        return v

    @field_validator("mem")
    @classmethod
    def _mem(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not re.fullmatch(r"\d+[KMGT]?", v):
            raise ValueError(f"{v!r} is not an sbatch memory size; write e.g. 480G or 64000M")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
        if bad:
            raise ValueError(f"{bad} are not shell variable names (letters, digits, '_')")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ClusterProfile":
        problems = []
        limits = [("max_timeout_min", f"partition {self.partition}'s limit", self.max_timeout_min)]
        if self.qos is not None:
            limits.append((f"qos_max_timeout_min.{self.qos}", f"QOS {self.qos}'s limit",
                           self.qos_max_timeout_min.get(self.qos)))
        for field, what, limit in limits:
            if limit is not None and self.timeout_min > limit:
                problems.append(f"timeout_min: {self.timeout_min} is more than {what} ({limit}, {field}); lower it")
        if self.signal_delay_s >= self.timeout_min * 60:
            problems.append(f"signal_delay_s: {self.signal_delay_s} s is not shorter than timeout_min "
                            f"({self.timeout_min} min): the task would be signalled as it starts; lower it")
        for key in self.sbatch:
            option = key.replace("_", "-")
            if option in SBATCH_OWNED:
                problems.append(f"sbatch.{key}: set it with the profile field {SBATCH_OWNED[option]!r} instead")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    # -- account -------------------------------------------------------------------------------------

    def resolved_account(self, account: Optional[str] = None) -> Optional[str]:
        """The account to charge: ``account`` (``--account``), else the profile's, else ``$account_env``."""
        found = account or self.account or os.environ.get(self.account_env) or None
        if found is None and self.account_required:
            raise ProfileError(self._source, [
                f"account: cluster {self.name!r} needs an account to charge; pass --account NAME or set "
                f"${self.account_env}"])
        return found

    # -- submitit ------------------------------------------------------------------------------------

    def executor_parameters(self, account: Optional[str] = None) -> dict[str, Any]:
        """Keyword arguments of ``submitit.AutoExecutor.update_parameters`` (submitit 1.5.4 names) for one task
        per node owning the node's CPUs and GPUs. The job name and ``slurm_array_parallelism`` are the
        submitter's (``executor`` sets the profile's cap); ``max_num_timeout`` is a constructor argument."""
        params: dict[str, Any] = {
            "timeout_min": self.timeout_min,
            "nodes": self.nodes,
            "tasks_per_node": 1,
            "cpus_per_task": self.cpus_per_node,
            "slurm_partition": self.partition,
            "slurm_signal_delay_s": self.signal_delay_s,
            "slurm_setup": [f"export {k}={shlex.quote(v)}" for k, v in self.env.items()] + list(self.setup),
            "slurm_additional_parameters": {"requeue" if self.requeue else "no-requeue": True, **self.sbatch},
        }
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        optional = {"slurm_qos": self.qos, "slurm_account": self.resolved_account(account), "slurm_mem": self.mem}
        params.update({k: v for k, v in optional.items() if v is not None})
        return params

    def executor(self, folder: Union[str, Path], account: Optional[str] = None):
        """A ``submitit.AutoExecutor`` on SLURM with this profile's parameters (``folder`` may hold ``%j``)."""
        import submitit

        executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=self.max_num_timeout)
        executor.update_parameters(**self.executor_parameters(account),
                                   slurm_array_parallelism=self.array_parallelism)
        return executor

    # -- where compute nodes can read and write ------------------------------------------------------

    def node_local_path(self, path: Union[str, Path]) -> Optional[str]:
        """The entry of ``node_local_roots`` (as written, e.g. ``$TMPDIR``) holding ``path``, or None when compute
        nodes see ``path`` as the login node does (always None on a single-node cluster)."""
        if self.single_node:
            return None
        return _root_of(path, self.node_local_roots)

    def shared_path(self, path: Union[str, Path]) -> bool:
        """``path`` lies under one of ``shared_roots`` (False when unknown, not only when node-local)."""
        return self.single_node or _root_of(path, self.shared_roots) is not None


def _root_of(path: Union[str, Path], roots: list[str]) -> Optional[str]:
    """The first of ``roots`` (``~`` and ``$VARS`` expanded; unset variables skipped) that holds ``path``."""
    target = Path(path).expanduser().resolve()
    for root in roots:
        expanded = os.path.expanduser(os.path.expandvars(root))
        if "$" in expanded or not expanded:
            continue
        if target.is_relative_to(Path(expanded).resolve()):
            return root
    return None


# -- one line per problem ----------------------------------------------------------------------------


def _problem(error: dict) -> list[str]:
    path = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return [f"{path}: unknown field; expected one of {sorted(ClusterProfile.model_fields)}"]
    if kind == "missing":
        return [f"{path}: missing; this field is required"]
    if kind == "value_error":
        lines = error["msg"].removeprefix("Value error, ").splitlines()
        return [line if not path else f"{path}: {line}" for line in lines]
    got = "" if isinstance(error["input"], (dict, list)) else f", got {error['input']!r}"
    return [f"{path}: {error['msg']}{got}"]


def parse_profile(data: Any, path: str = "<profile>") -> ClusterProfile:
    """Validate a profile's raw mapping; every problem is one line naming the field."""
    if data is None:
        raise ProfileError(path, ["the file holds no profile; write its fields (name, partition, gpus_per_node, "
                                  "cpus_per_node, timeout_min, …)"])
    if not isinstance(data, dict):
        raise ProfileError(path, ["the file must be a YAML mapping of profile fields (name, partition, "
                                  f"gpus_per_node, cpus_per_node, timeout_min, …), not a {type(data).__name__}"])
    try:
        profile = ClusterProfile.model_validate(data)
    except ValidationError as e:
        raise ProfileError(path, list(dict.fromkeys(line for err in e.errors() for line in _problem(err)))) from None
    profile._source = path
    return profile


def apply_overrides(data: dict, overrides: list[str], path: str = "<profile>") -> dict:
    """``--set FIELD=VALUE`` on the raw mapping: FIELD is a field or ``env.NAME`` / ``sbatch.NAME`` /
    ``qos_max_timeout_min.NAME``; VALUE is read as YAML."""
    problems = []
    for item in overrides:
        field, sep, text = item.partition("=")
        head, dot, key = field.partition(".")
        if not sep or not head or (dot and not key):
            problems.append(f"--set {item!r}: expected FIELD=VALUE, e.g. timeout_min=30")
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            problems.append(f"--set {field}: value {text!r} is not valid YAML; quote it or fix it")
            continue
        if not dot:
            data[head] = value
        elif isinstance(data.get(head, {}), dict):
            data[head] = {**data.get(head, {}), key: value}
        else:
            problems.append(f"--set {field}: {head} is not a mapping")
    if problems:
        raise ProfileError(path, problems)
    return data


def bundled_profiles() -> dict[str, Path]:
    """The profiles shipped with the package: name → file (``launch/profiles/NAME.yaml``)."""
    folder = resources.files("launch") / "profiles"
    return {Path(f.name).stem: Path(str(f)) for f in sorted(folder.iterdir(), key=lambda f: f.name)
            if f.name.endswith(".yaml")}


def profile_path(name_or_path: Union[str, Path]) -> Path:
    """The file ``--cluster`` names: a bundled profile's (a bare name, e.g. ``leonardo``), else the path as given."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or os.sep in text or text.endswith((".yaml", ".yml")):
        return Path(name_or_path)
    bundled = bundled_profiles()
    if text not in bundled:
        raise ProfileError(text, [f"not a bundled cluster profile (those are {', '.join(bundled)}); name one of them "
                                  "or give the path of a profile YAML file"])
    return bundled[text]


def load_profile(name_or_path: Union[str, Path], overrides: Optional[list[str]] = None) -> ClusterProfile:
    """Read and validate a cluster profile, bundled (``leonardo``) or a file (safe YAML loader only), after
    ``--set`` overrides."""
    path = profile_path(name_or_path)
    source = str(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ProfileError(source, ["too large to be a cluster profile (a few lines of YAML); check the path"])
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not UTF-8 text"
        raise ProfileError(source, [f"cannot read the cluster profile ({reason}); check the path, or name a bundled "
                                    f"profile: {', '.join(bundled_profiles())}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or e
        raise ProfileError(source, [f"{where}not valid YAML ({problem}); fix the file"]) from None
    if overrides:
        if not isinstance(data, dict):
            raise ProfileError(source, ["the file must be a YAML mapping of profile fields"])
        data = apply_overrides(data, overrides, source)
    return parse_profile(data, source)
