"""The field's offline MARL datasets into osd's format, and osd's datasets out as og-marl Vaults.

    python datasets/convert.py og-marl --vault PATH/NAME.vlt --uid UID --task TASK --out OUT.npz
    python datasets/convert.py omar --dir PATH --task TASK --tier TIER --out OUT.npz
    python datasets/convert.py to-vault --dataset OURS.npz --out DIR/NAME.vlt --uid UID

og-marl Vault (flashbax's format; read and written here with tensorstore and numpy, no JAX): the folder
`NAME.vlt/UID/` holds `metadata.json` (`version`, `structure_shape`, `structure_dtype`) and, in one
tensorstore OCDBT database, one zarr array per leaf of the experience tree, named by its key path with a
trailing dot (`observations.`, `actions.`, `rewards.`, `terminals.`, `truncations.`, `infos.state.`),
plus the int32 array `vault_index` holding the number of valid time steps: the arrays are allocated far
longer along time. Layout `(B, T, N, ...)`; rewards, terminals and truncations are `(B, T, N)`, the
global state `(B, T, state)`. A Vault stores no next observation: each row holds episodes back to back,
split where an agent's terminal or truncation is set.

OMAR (`--dir PATH`): `PATH/<tier>/seed_<k>_data/{obs,acs,rews,next_obs,dones}_<i>.npy`, one file per
agent i, `[T, ...]` each; MaMuJoCo adds `states_<i>.npy` and `next_states_<i>.npy`.

What a conversion does (datasets/README.md, "The field's datasets"):
- next observations and states: the next step's, inside an episode. At an episode's end a Vault has no
  next observation: a terminal step keeps its own as a placeholder (a terminal target never reads it); the
  last step of a truncated or unfinished episode is dropped and the step before it ends the episode as
  a timeout (`dropped_steps` in the metadata counts them). OMAR's files have next observations; an
  episode ends where `dones` is set or `next_obs[t]` is not `obs[t + 1]`, and a done on the
  `--episode-steps`-th step of an episode is a time limit, so a timeout, not a terminal.
- team reward: the agents' common reward (their mean where they differ); terminal: any agent's.
- actions: mapped affinely from the env's action box onto [-1, 1] (no change where the box is [-1, 1]).
- the env: a MaMuJoCo dataset records `agent_obsk` (og-marl's `gymnasium_mamujoco` uses 1), and its sizes
  are checked against `gymnasium_robotics.mamujoco_v1` built with it. OMAR's MPE is its own modified
  particle world: `--task omar-mpe/<scenario>` trains but is never evaluated (osd_common.OMAR_MPE_PREFIX).
- reference returns: ours (datasets/reference_returns.json) where the task has them, else `references:
  "unknown"` with (ref_random, ref_expert) = (0, 100), so every "normalized score" is the raw return.

`to-vault` writes one batch row with osd's arrays (actions in [-1, 1], the team reward copied to every
agent) and two extra leaves, `infos.next_observations` and `infos.next_state`, plus osd's metadata under
the key `osd` of metadata.json: converting it back with `og-marl` gives the same arrays, bit for bit.
An existing output is refused unless --force.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import pathlib
import re
import shutil
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import osd_common  # noqa: E402
from osd_common import DatasetError  # noqa: E402

CONVERTER_VERSION = "osd-convert-1"
VAULT_VERSION = 1.2  # the flashbax Vault version written; readers accept any 1.x, as flashbax does
TIME_AXIS_MAX_LENGTH = int(10e12)  # flashbax allocates every leaf this long along time
VAULT_COMPRESSION = {"id": "gzip", "level": 5}  # flashbax's default
REQUIRED_LEAVES = ("observations", "actions", "rewards", "terminals", "truncations", "infos.state")
OSD_LEAVES = ("infos.next_observations", "infos.next_state")  # written by to-vault, read when present
OGMARL_AGENT_OBSK = 1  # og-marl's gymnasium_mamujoco datasets: mamujoco_v1 with agent_obsk=1
OMAR_FIELDS = ("obs", "acs", "rews", "next_obs", "dones")
OMAR_STATE_FIELDS = ("states", "next_states")
ACTION_TOLERANCE = 1e-5  # as osd_common's loader


# ---------------------------------------------------------------------------------------------------
# Vaults: tensorstore (zarr arrays in an OCDBT database), no JAX
# ---------------------------------------------------------------------------------------------------
def _tensorstore():
    try:
        import tensorstore
    except ImportError:
        raise SystemExit("convert: Vaults need the `tensorstore` package: pip install -r requirements.txt") from None
    return tensorstore


def _store_spec(base: pathlib.Path, name: str) -> dict:
    """The spec flashbax opens each leaf with: a zarr array at `name` inside the OCDBT database `base`."""
    return {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": f"file://{base.resolve()}", "path": name},
            "metadata": {}}


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """Flatten a nested metadata tree into {'infos.state': value, ...}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _nest(flat: dict[str, object]) -> dict:
    """{'infos.state': value} -> {'infos': {'state': value}}: the tree flashbax's metadata holds."""
    tree: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def read_vault(vault, uid: str, leaves=REQUIRED_LEAVES + OSD_LEAVES) -> tuple[dict[str, np.ndarray], dict]:
    """The valid part `[:, :vault_index]` of each named leaf present in the Vault, and its metadata.json.
    Leaves of REQUIRED_LEAVES must be present; DatasetError names the Vault, the store and the fix."""
    ts = _tensorstore()
    vault = pathlib.Path(vault)
    base = vault / uid
    if not vault.is_dir():
        raise DatasetError(f"{vault}: no such Vault folder; give --vault PATH/NAME.vlt (the folder holding the uids)")
    if not base.is_dir():
        uids = sorted(p.name for p in vault.iterdir() if (p / "metadata.json").is_file())
        raise DatasetError(f"{vault}: has no uid {uid!r}; its uids: {', '.join(uids) or 'none'}")
    meta_path = base / "metadata.json"
    try:
        metadata = json.loads(meta_path.read_text())
    except OSError:
        raise DatasetError(f"{meta_path}: is missing; this is not a flashbax Vault") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{meta_path}: is not valid JSON ({err})") from None
    for key in ("version", "structure_shape", "structure_dtype"):
        if key not in metadata:
            raise DatasetError(f"{meta_path}: field '{key}' is missing; this is not a flashbax Vault")
    if not isinstance(metadata["version"], (int, float)) or int(metadata["version"]) != int(VAULT_VERSION):
        raise DatasetError(f"{meta_path}: field 'version' is {metadata['version']!r}; this reads Vault version 1.x")
    shapes = _leaves(metadata["structure_shape"])
    missing = [name for name in REQUIRED_LEAVES if name not in shapes]
    if missing:
        raise DatasetError(f"{meta_path}: field 'structure_shape' has no leaf {', '.join(repr(n) for n in missing)}; "
                           f"an og-marl Vault of continuous control has {', '.join(REQUIRED_LEAVES)}")
    try:
        index_store = ts.open(_store_spec(base, "vault_index"), open=True).result()
        length = int(np.asarray(index_store.read().result()).reshape(-1)[0])
    except ValueError:
        raise DatasetError(f"{base}: store 'vault_index' is absent, so the number of valid time steps is unknown "
                           "(the arrays are allocated far longer); the Vault was copied or written incompletely") from None
    if length <= 0:
        raise DatasetError(f"{base}: store 'vault_index' says {length} valid time steps: the Vault is empty")
    arrays = {}
    for name in leaves:
        if name not in shapes:
            continue
        try:
            declared = tuple(ast.literal_eval(str(shapes[name])))
        except (ValueError, SyntaxError):
            raise DatasetError(f"{meta_path}: structure_shape of '{name}' is {shapes[name]!r}, not a shape") from None
        try:
            store = ts.open(_store_spec(base, f"{name}."), open=True).result()
        except ValueError:
            raise DatasetError(f"{base}: store '{name}.' is missing from the Vault's database, though "
                               "metadata.json lists it; the Vault was copied or written incompletely") from None
        if len(store.shape) != len(declared) or store.shape[0] != declared[0] or tuple(store.shape[2:]) != declared[2:]:
            raise DatasetError(f"{base}: store '{name}.' has shape (B, T, ...) = {tuple(store.shape)} but metadata.json "
                               f"declares {declared}; the store and metadata.json disagree")
        if store.shape[1] < length:
            raise DatasetError(f"{base}: store '{name}.' holds {store.shape[1]} time steps but 'vault_index' says "
                               f"{length}; the Vault is truncated")
        arrays[name] = np.asarray(store[:, :length].read().result())
    return arrays, metadata


def write_vault(vault, uid: str, leaves: dict[str, np.ndarray], extra_metadata: dict, force: bool = False) -> pathlib.Path:
    """Write `leaves` ({'observations': [B, T, ...], 'infos.state': ...}) as the Vault `vault/uid`, in the
    layout flashbax writes: metadata.json, one gzip zarr array per leaf allocated TIME_AXIS_MAX_LENGTH long
    along time, and `vault_index` = T. Written into a temporary folder, then renamed. Refuses an existing
    uid unless `force`."""
    ts = _tensorstore()
    vault = pathlib.Path(vault)
    if not uid or uid.startswith(".") or "/" in uid or os.sep in uid:
        raise DatasetError(f"--uid {uid!r}: a uid is one folder name inside the Vault, e.g. Good or v1")
    base = vault / uid
    if base.exists():
        if not force:
            raise DatasetError(f"{base}: exists already; pass --force to overwrite it, or choose another --uid")
        if not (base / "metadata.json").is_file():
            raise DatasetError(f"{base}: exists and is not a Vault (no metadata.json); not overwriting it")
    lengths = {name: array.shape[1] for name, array in leaves.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"leaves differ in length: {lengths}")
    length = next(iter(lengths.values()))
    tmp = vault / f".{uid}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an interrupted write of this same uid
    tmp.mkdir(parents=True)
    metadata = {"version": VAULT_VERSION,
                "structure_shape": _nest({name: str(tuple(array.shape)) for name, array in leaves.items()}),
                "structure_dtype": _nest({name: array.dtype.name for name, array in leaves.items()}),
                **extra_metadata}
    (tmp / "metadata.json").write_text(json.dumps(metadata))
    for name, array in leaves.items():
        spec = _store_spec(tmp, f"{name}.")
        spec["metadata"]["compressor"] = VAULT_COMPRESSION
        store = ts.open(spec, shape=(array.shape[0], TIME_AXIS_MAX_LENGTH, *array.shape[2:]), dtype=array.dtype.name,
                        create=True).result()
        store[:, :length].write(array).result()
    index_store = ts.open(_store_spec(tmp, "vault_index"), dtype=np.int32, shape=(1,), create=True).result()
    index_store.write(np.array([length], dtype=np.int32)).result()
    if base.exists():
        shutil.rmtree(base)
    os.replace(tmp, base)
    return base


# ---------------------------------------------------------------------------------------------------
# Shared: episodes, the env the data comes from, reference returns
# ---------------------------------------------------------------------------------------------------
def team_reward(per_agent: np.ndarray) -> np.ndarray:
    """[T, N] -> [T]: the agents' common reward, exactly; their mean where they differ."""
    per_agent = per_agent.astype(np.float32)
    if np.array_equal(per_agent, np.repeat(per_agent[:, :1], per_agent.shape[1], axis=1)):
        return per_agent[:, 0].copy()
    return per_agent.mean(axis=1, dtype=np.float64).astype(np.float32)


def rebuild_next(observations, states, terminals, ends, next_observations=None, next_states=None) -> dict:
    """One stream of back-to-back episodes -> transitions with next observations and states.

    `ends[t]` marks an episode's last step (a terminal, a truncation or the end of the data). Given
    `next_observations`/`next_states` (osd's own Vaults) every step is kept as it is. Otherwise a step's
    next is the following step's observation; a terminal step keeps its own as a placeholder; the last
    step of a truncated or unfinished episode has none, so it is dropped and the step before it (same
    episode) becomes the episode's timeout."""
    T = len(terminals)
    terminals = terminals.astype(bool)
    ends = ends.astype(bool)
    if next_observations is not None:
        return {"keep": np.ones(T, dtype=bool), "next_observations": next_observations, "next_states": next_states,
                "terminals": terminals, "timeouts": ends & ~terminals}
    following = np.minimum(np.arange(T) + 1, T - 1)
    following[terminals] = np.flatnonzero(terminals)  # placeholder: a terminal target never reads it
    drop = ends & ~terminals
    timeouts = np.zeros(T, dtype=bool)
    before = np.flatnonzero(drop) - 1
    before = before[before >= 0]
    timeouts[before[~ends[before]]] = True
    return {"keep": ~drop, "next_observations": observations[following], "next_states": states[following],
            "terminals": terminals, "timeouts": timeouts}


def env_of(task: str, agent_obsk: int):
    """The env the data was recorded in, or None where it cannot be built here (OMAR's MPE)."""
    if not osd_common.can_evaluate(task):
        return None
    try:
        return osd_common.make_env(task, agent_obsk=agent_obsk or 0)
    except osd_common.TaskError as err:
        raise DatasetError(f"--task: {err}") from None
    except Exception as err:  # gymnasium_robotics raises plain exceptions for unknown scenarios or splits
        raise DatasetError(f"--task {task}: gymnasium_robotics cannot build it with agent_obsk={agent_obsk} "
                           f"({type(err).__name__}: {err})") from None


def references(task: str) -> dict:
    """Metadata of the reference returns: ours where datasets/reference_returns.json has the task and the
    task is ours, otherwise unknown: (0, 100), so that a "normalized score" is the return itself."""
    table = json.loads(osd_common.REFERENCE_RETURNS_FILE.read_text()) if osd_common.REFERENCE_RETURNS_FILE.exists() else {}
    if task in table and osd_common.can_evaluate(task):
        ref_random, ref_expert = osd_common.reference_returns(task)
        return {"ref_random": ref_random, "ref_expert": ref_expert, "references": "ours"}
    ref_random, ref_expert = osd_common.REFERENCES_UNKNOWN
    return {"ref_random": ref_random, "ref_expert": ref_expert, "references": "unknown"}


def check_task_flags(task: str, agent_obsk: int | None, default_obsk: int | None) -> int | None:
    """Validate --task and --agent-obsk together; return the agent_obsk to use (None off MaMuJoCo)."""
    try:
        osd_common.check_task(task)
    except osd_common.TaskError as err:
        raise DatasetError(f"--task: {err}") from None
    if task.startswith("mamujoco/"):
        if agent_obsk is None:
            if default_obsk is None:
                raise DatasetError(f"--task {task}: pass --agent-obsk K, the MaMuJoCo observation depth the data "
                                   "was recorded with (its env and evaluation are built with it)")
            agent_obsk = default_obsk
        if agent_obsk < 0:
            raise DatasetError(f"--agent-obsk {agent_obsk}: must be 0 or more")
        return agent_obsk
    if agent_obsk is not None:
        raise DatasetError(f"--agent-obsk: is a MaMuJoCo setting; task {task} takes none")
    return None


def env_sizes(task, agent_obsk, n_agents, obs_width, act_width, state_dim, where: str, fields: dict) -> dict:
    """Per-agent sizes and action boxes of the data's env, checked against the data's widths; from the
    widths alone (every agent at full width) where no env can be built. `fields` names, for the error
    messages, where the data's observations, actions and states come from."""
    env = env_of(task, agent_obsk)
    if env is None:
        return {"obs_dims": [obs_width] * n_agents, "act_dims": [act_width] * n_agents, "state_dim": state_dim,
                "agent_names": None, "act_low": None, "act_high": None}
    env.close()
    obsk = f" with agent_obsk={agent_obsk}" if agent_obsk is not None else ""
    hint = " (pass the --agent-obsk the data was recorded with)" if agent_obsk is not None else ""
    if n_agents != env.n_agents:
        raise DatasetError(f"{where}: {fields['observations']} holds {n_agents} agents but {task} has {env.n_agents}")
    checks = (("observations", obs_width, max(env.obs_dims), f"per-agent sizes {env.obs_dims}"),
              ("actions", act_width, max(env.act_dims), f"per-agent sizes {env.act_dims}"),
              ("states", state_dim, env.state_dim, f"a global state of {env.state_dim}"))
    for field, got, want, what in checks:
        if got != want:
            raise DatasetError(f"{where}: {fields[field]} has width {got} but {task}{obsk} has {what}; the shapes "
                               f"disagree{hint}")
    return {"obs_dims": list(env.obs_dims), "act_dims": list(env.act_dims), "state_dim": env.state_dim,
            "agent_names": list(env.agent_names), "act_low": env._act_low, "act_high": env._act_high}


def to_unit_box(actions: np.ndarray, sizes: dict) -> np.ndarray:
    """[T, N, A] env actions -> [-1, 1]: affine per agent from its action box; unchanged where the box
    already is [-1, 1] (bit for bit) or no env is known."""
    if sizes["act_low"] is None:
        return actions
    out = actions.copy()
    for i, (low, high) in enumerate(zip(sizes["act_low"], sizes["act_high"])):
        if np.all(low == -1.0) and np.all(high == 1.0):
            continue
        n = len(low)
        out[:, i, :n] = (2.0 * (actions[:, i, :n] - low) / (high - low) - 1.0).astype(np.float32)
    return out


def check_data(where: str, fields: dict, arrays: dict, sizes: dict) -> None:
    """Padding beyond each agent's size must be zero and actions in [-1, 1]: otherwise the data does not
    come from the env it is said to (another agent split or agent_obsk), or its actions are scaled otherwise."""
    for key, dims in (("observations", sizes["obs_dims"]), ("actions", sizes["act_dims"])):
        for i, dim in enumerate(dims):
            if np.any(arrays[key][:, i, dim:] != 0):
                raise DatasetError(f"{where}: {fields[key]} of agent {i} has nonzero entries beyond its {dim} real "
                                   "ones; the data comes from another agent split or agent_obsk")
    for key in ("observations", "actions", "states", "rewards"):
        if not np.all(np.isfinite(arrays[key])):
            raise DatasetError(f"{where}: {fields[key]} holds NaN or inf values")
    worst = np.abs(arrays["actions"]).max(axis=(0, 2))  # per agent
    if worst.max() > 1.0 + ACTION_TOLERANCE:
        agent = int(worst.argmax())
        raise DatasetError(f"{where}: {fields['actions'].replace('<agent>', str(agent))} leave the env's action box "
                           f"(max |a| = {worst.max():.3f} for agent {agent} after mapping the box onto [-1, 1]); the "
                           "data scales its actions otherwise: rescale them first")


def finish(out, arrays: dict, meta: dict, force: bool) -> pathlib.Path:
    """Pad-free arrays + metadata -> a validated osd dataset file (osd_common.save_dataset)."""
    arrays = {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in arrays.items()}
    if len(arrays["rewards"]) == 0:
        raise DatasetError(f"{out}: no transition is left after rebuilding next observations (every episode "
                           "of the input is one step long and ends without a terminal)")
    return osd_common.save_dataset(out, arrays, meta, force=force)


# ---------------------------------------------------------------------------------------------------
# og-marl Vault -> osd
# ---------------------------------------------------------------------------------------------------
def vault_to_arrays(vault, uid: str, task: str | None = None, tier: str | None = None,
                    agent_obsk: int | None = None) -> tuple[dict, dict]:
    """An og-marl Vault (or one written by to-vault) -> (osd arrays, osd metadata)."""
    vault = pathlib.Path(vault)
    where = str(vault / uid)
    leaves, metadata = read_vault(vault, uid)
    obs, act = leaves["observations"], leaves["actions"]
    if obs.ndim != 4:
        raise DatasetError(f"{where}: store 'observations.' has shape {obs.shape}, expected (B, T, N, obs)")
    B, T, N, obs_width = obs.shape
    expected = {"actions": (B, T, N), "rewards": (B, T, N), "terminals": (B, T, N), "truncations": (B, T, N),
                "infos.state": (B, T), "infos.next_observations": obs.shape, "infos.next_state": (B, T)}
    for name, prefix in expected.items():
        if name in leaves and leaves[name].shape[:len(prefix)] != prefix:
            raise DatasetError(f"{where}: store '{name}.' has shape {leaves[name].shape}, expected it to start with "
                               f"{prefix} as 'observations.' {obs.shape} does; the shapes disagree")
    for name, ndim in (("actions", 4), ("rewards", 3), ("terminals", 3), ("truncations", 3), ("infos.state", 3)):
        if leaves[name].ndim != ndim:
            raise DatasetError(f"{where}: store '{name}.' has shape {leaves[name].shape}, expected {ndim} axes "
                               "(B, T, N, ...) with rewards, terminals and truncations (B, T, N), state (B, T, state)")
    exact_next = all(name in leaves for name in OSD_LEAVES)
    if exact_next and leaves["infos.next_state"].shape != leaves["infos.state"].shape:
        raise DatasetError(f"{where}: store 'infos.next_state.' has shape {leaves['infos.next_state'].shape}, "
                           f"'infos.state.' {leaves['infos.state'].shape}; the shapes disagree")
    fields = {"observations": "store 'observations.'", "actions": "store 'actions.'", "states": "store 'infos.state.'",
              "rewards": "store 'rewards.'"}

    osd_meta = metadata.get("osd")
    if osd_meta is not None:  # written by to-vault: osd's own metadata, arrays already in osd's conventions
        for flag, value in (("task", task), ("tier", tier), ("agent_obsk", agent_obsk)):
            stored = osd_common.dataset_agent_obsk(osd_meta) if flag == "agent_obsk" else osd_meta.get(flag)
            if value is not None and value != stored:
                raise DatasetError(f"{where}: was written from an osd dataset of {flag} {stored!r}, not --{flag.replace('_', '-')} "
                                   f"{value!r}; drop the flag or fix it")
        meta = dict(osd_meta)
        sizes = {"obs_dims": list(meta["obs_dims"]), "act_dims": list(meta["act_dims"]), "state_dim": meta["state_dim"],
                 "act_low": None, "act_high": None}
    else:
        if task is None:
            raise DatasetError(f"{where}: pass --task (e.g. mamujoco/HalfCheetah-2x3 for og-marl's 2halfcheetah)")
        agent_obsk = check_task_flags(task, agent_obsk, OGMARL_AGENT_OBSK)
        sizes = env_sizes(task, agent_obsk, N, obs_width, act.shape[-1], leaves["infos.state"].shape[-1], where, fields)
        meta = {"task": task, "tier": tier or uid, "n_agents": N, "obs_dims": sizes["obs_dims"],
                "act_dims": sizes["act_dims"], "state_dim": sizes["state_dim"], **references(task)}
        if sizes["agent_names"] is not None:
            meta["agent_names"] = sizes["agent_names"]
        if agent_obsk is not None:
            meta["agent_obsk"] = agent_obsk

    columns = {key: [] for key in osd_common.TRANSITION_FIELDS}
    dropped = 0
    for b in range(B):
        terminals = leaves["terminals"][b].astype(bool).any(axis=1)
        ends = terminals | leaves["truncations"][b].astype(bool).any(axis=1)
        ends[-1] = True  # the data ends: an unfinished last episode ends here too
        rows = rebuild_next(obs[b], leaves["infos.state"][b], terminals, ends,
                            leaves["infos.next_observations"][b] if exact_next else None,
                            leaves["infos.next_state"][b] if exact_next else None)
        keep = rows["keep"]
        dropped += int((~keep).sum())
        columns["observations"].append(obs[b][keep])
        columns["actions"].append(act[b][keep])
        columns["rewards"].append(team_reward(leaves["rewards"][b])[keep])
        columns["next_observations"].append(rows["next_observations"][keep])
        columns["states"].append(leaves["infos.state"][b][keep])
        columns["next_states"].append(rows["next_states"][keep])
        columns["terminals"].append(rows["terminals"][keep])
        columns["timeouts"].append(rows["timeouts"][keep])
    arrays = {key: np.concatenate(value).astype(np.float32) for key, value in columns.items()}
    arrays["actions"] = to_unit_box(arrays["actions"], sizes)
    check_data(where, fields, arrays, sizes)
    arrays.update(osd_common.agent_masks(sizes["obs_dims"], sizes["act_dims"]))
    if osd_meta is None:
        meta.update(source={"format": "og-marl Vault", "vault": str(vault), "uid": uid,
                            "vault_version": metadata["version"], "batch_rows": B, "time_steps": T},
                    dropped_steps=dropped, converter_version=CONVERTER_VERSION)
    return arrays, meta


# ---------------------------------------------------------------------------------------------------
# OMAR -> osd
# ---------------------------------------------------------------------------------------------------
def _load_npy(path: pathlib.Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: is missing; OMAR's layout has {{{','.join(OMAR_FIELDS)}}}_<agent>.npy per agent "
                           "(MaMuJoCo also states_<agent>.npy and next_states_<agent>.npy)")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:  # truncated, not .npy, pickled objects
        raise DatasetError(f"{path}: cannot be read as a .npy array ({type(err).__name__}: {err})") from None


def omar_seed_dirs(root: pathlib.Path, tier: str) -> dict[int, pathlib.Path]:
    folder = root / tier
    if not folder.is_dir():
        tiers = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise DatasetError(f"{folder}: no such folder; --dir is OMAR's <env> folder and --tier one of its "
                           f"sub-folders ({', '.join(tiers) or 'none found'})")
    seeds = {}
    for path in folder.iterdir():
        match = re.fullmatch(r"seed_(\d+)_data", path.name)
        if match and path.is_dir():
            seeds[int(match.group(1))] = path
    if not seeds:
        raise DatasetError(f"{folder}: holds no seed_<k>_data folder")
    return dict(sorted(seeds.items()))


def omar_to_arrays(root, task: str, tier: str, seed: str | None = None, agent_obsk: int | None = None,
                   episode_steps: int | None = None) -> tuple[dict, dict]:
    """OMAR's per-agent .npy files of one tier (one seed, or all pooled in seed order) -> osd arrays, meta."""
    root = pathlib.Path(root)
    if task.startswith("mpe/"):
        raise DatasetError(f"--task {task}: OMAR's MPE is its own modified particle world (its own rewards and "
                           f"action scaling), not mpe2's; use --task {osd_common.OMAR_MPE_PREFIX}{task.split('/', 1)[1]}, "
                           "which trains but is not evaluated")
    agent_obsk = check_task_flags(task, agent_obsk, None)
    if episode_steps is None:
        episode_steps = osd_common.MPE_EPISODE_STEPS if task.startswith(osd_common.OMAR_MPE_PREFIX) else 1000
    seed_dirs = omar_seed_dirs(root, tier)
    if seed is None:
        if len(seed_dirs) > 1:
            raise DatasetError(f"{root / tier}: holds seeds {', '.join(map(str, seed_dirs))}; pass --seed K (OMAR "
                               "trains seed k on seed_k_data) or --seed all to pool them")
        chosen = list(seed_dirs)
    elif seed == "all":
        chosen = list(seed_dirs)
    else:
        if not str(seed).isdigit() or int(seed) not in seed_dirs:
            raise DatasetError(f"--seed {seed}: {root / tier} holds seeds {', '.join(map(str, seed_dirs))} (or 'all')")
        chosen = [int(seed)]
    with_states = task.startswith("mamujoco/")
    names = OMAR_FIELDS + (OMAR_STATE_FIELDS if with_states else ())

    parts, n_agents_seen = [], None
    for k in chosen:
        folder = seed_dirs[k]
        n_agents = 0
        while (folder / f"obs_{n_agents}.npy").is_file():
            n_agents += 1
        if n_agents == 0:
            raise DatasetError(f"{folder / 'obs_0.npy'}: is missing; OMAR's layout has one obs_<agent>.npy per agent")
        if n_agents_seen not in (None, n_agents):
            raise DatasetError(f"{folder}: holds {n_agents} agents, seed_{chosen[0]}_data {n_agents_seen}; the shapes disagree")
        n_agents_seen = n_agents
        files = {(name, i): _load_npy(folder / f"{name}_{i}.npy") for name in names for i in range(n_agents)}
        T = files[("obs", 0)].shape[0]
        for (name, i), array in files.items():
            path = folder / f"{name}_{i}.npy"
            if name in ("rews", "dones"):
                if array.shape not in ((T,), (T, 1)):
                    raise DatasetError(f"{path}: has shape {array.shape}, expected ({T},) or ({T}, 1) as obs_0.npy has "
                                       f"{T} steps; the shapes disagree")
                files[(name, i)] = array.reshape(T)
            elif array.ndim != 2 or array.shape[0] != T:
                raise DatasetError(f"{path}: has shape {array.shape}, expected ({T}, size) as obs_0.npy has {T} steps; "
                                   "the shapes disagree")
        for i in range(n_agents):
            if files[("next_obs", i)].shape != files[("obs", i)].shape:
                raise DatasetError(f"{folder / f'next_obs_{i}.npy'}: has shape {files[('next_obs', i)].shape}, obs_{i}.npy "
                                   f"{files[('obs', i)].shape}; the shapes disagree")
            if with_states:
                for name in OMAR_STATE_FIELDS:
                    if not np.array_equal(files[(name, i)], files[(name, 0)]):
                        raise DatasetError(f"{folder / f'{name}_{i}.npy'}: differs from {name}_0.npy; the global "
                                           "state must be the same for every agent")
        parts.append((folder, n_agents, T, files))

    obs_dims = [parts[0][3][("obs", i)].shape[1] for i in range(n_agents_seen)]
    act_dims = [parts[0][3][("acs", i)].shape[1] for i in range(n_agents_seen)]
    for folder, _, _, files in parts[1:]:
        got = ([files[("obs", i)].shape[1] for i in range(n_agents_seen)], [files[("acs", i)].shape[1] for i in range(n_agents_seen)])
        if got != (obs_dims, act_dims):
            raise DatasetError(f"{folder}: per-agent sizes {got} differ from seed_{chosen[0]}_data's {(obs_dims, act_dims)}")

    def padded(files, name, width):
        out = np.zeros((files[(name, 0)].shape[0], n_agents_seen, width), dtype=np.float32)
        for i in range(n_agents_seen):
            out[:, i, : files[(name, i)].shape[1]] = files[(name, i)]
        return out

    columns = {key: [] for key in osd_common.TRANSITION_FIELDS}
    n_terminals = 0
    for folder, _, T, files in parts:
        obs, next_obs = padded(files, "obs", max(obs_dims)), padded(files, "next_obs", max(obs_dims))
        if with_states:
            states, next_states = files[("states", 0)], files[("next_states", 0)]
        else:  # osd's MPE state: the controlled agents' observations, concatenated (osd_common.MPEEnv)
            states = np.concatenate([files[("obs", i)] for i in range(n_agents_seen)], axis=1)
            next_states = np.concatenate([files[("next_obs", i)] for i in range(n_agents_seen)], axis=1)
        dones = np.stack([files[("dones", i)] for i in range(n_agents_seen)], axis=1).astype(bool).any(axis=1)
        ends = dones.copy()
        ends[:-1] |= np.any(next_obs[:-1] != obs[1:], axis=(1, 2))  # the next episode starts elsewhere
        ends[-1] = True
        starts = np.concatenate([[0], np.flatnonzero(ends)[:-1] + 1])
        lengths = np.zeros(T, dtype=np.int64)
        lengths[ends] = np.flatnonzero(ends) - starts + 1
        terminals = dones & ends & (lengths < episode_steps)  # a done at the time limit is a timeout
        n_terminals += int(terminals.sum())
        columns["observations"].append(obs)
        columns["next_observations"].append(next_obs)
        columns["actions"].append(padded(files, "acs", max(act_dims)))
        columns["rewards"].append(team_reward(np.stack([files[("rews", i)] for i in range(n_agents_seen)], axis=1)))
        columns["states"].append(states)
        columns["next_states"].append(next_states)
        columns["terminals"].append(terminals)
        columns["timeouts"].append(ends & ~terminals)
    arrays = {key: np.concatenate(value).astype(np.float32) for key, value in columns.items()}
    where = str(root / tier / (f"seed_{chosen[0]}_data" if len(chosen) == 1 else "seed_*_data"))
    fields = {"observations": "obs_<agent>.npy", "actions": "acs_<agent>.npy", "rewards": "rews_<agent>.npy",
              "states": "states_<agent>.npy" if with_states else "obs_<agent>.npy (the state)"}
    sizes = env_sizes(task, agent_obsk, n_agents_seen, max(obs_dims), max(act_dims), arrays["states"].shape[1], where, fields)
    if sizes["act_low"] is not None and sizes["obs_dims"] != obs_dims:
        raise DatasetError(f"{where}: obs_<agent>.npy sizes {obs_dims} differ from {task}'s {sizes['obs_dims']}; the "
                           "shapes disagree (pass the --agent-obsk the data was recorded with)")
    arrays["actions"] = to_unit_box(arrays["actions"], sizes)
    check_data(where, fields, arrays, {**sizes, "obs_dims": obs_dims, "act_dims": act_dims})
    arrays.update(osd_common.agent_masks(obs_dims, act_dims))
    meta = {"task": task, "tier": tier, "n_agents": n_agents_seen, "obs_dims": obs_dims, "act_dims": act_dims,
            "state_dim": int(arrays["states"].shape[1]), **references(task),
            "source": {"format": "OMAR", "dir": str(root), "tier": tier, "seeds": chosen},
            "episode_steps": episode_steps, "dropped_steps": 0, "converter_version": CONVERTER_VERSION}
    if sizes["agent_names"] is not None:
        meta["agent_names"] = sizes["agent_names"]
    if agent_obsk is not None:
        meta["agent_obsk"] = agent_obsk
    return arrays, meta


# ---------------------------------------------------------------------------------------------------
# osd -> Vault
# ---------------------------------------------------------------------------------------------------
def dataset_to_vault(dataset, out, uid: str, force: bool = False) -> pathlib.Path:
    """An osd dataset -> the Vault `out/uid` (one batch row), readable by flashbax and og-marl."""
    data = osd_common.load_dataset(str(dataset))
    out = pathlib.Path(out)
    if out.suffix != ".vlt":
        raise DatasetError(f"--out {out}: a Vault folder's name ends in .vlt (og-marl's <scenario>.vlt); "
                           f"choose e.g. {out.with_suffix('.vlt')}")
    N = data.n_agents

    def per_agent(values: np.ndarray) -> np.ndarray:  # [T] -> [1, T, N]
        return np.ascontiguousarray(np.repeat(values[None, :, None], N, axis=2))

    leaves = {"observations": data.observations[None], "actions": data.actions[None],
              "rewards": per_agent(data.rewards), "terminals": per_agent(data.terminals),
              "truncations": per_agent(data.timeouts), "infos.state": data.states[None],
              "infos.next_observations": data.next_observations[None], "infos.next_state": data.next_states[None]}
    return write_vault(out, uid, leaves, {"osd": data.meta}, force=force)


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    og = sub.add_parser("og-marl", help="an og-marl (flashbax) Vault -> an osd dataset")
    og.add_argument("--vault", required=True, help="the Vault folder PATH/NAME.vlt (it holds one folder per uid)")
    og.add_argument("--uid", required=True, help="the dataset inside the Vault, e.g. Good, Medium, Poor, Replay")
    og.add_argument("--task", default=None, help="osd task the data comes from, e.g. mamujoco/HalfCheetah-2x3 for "
                    "og-marl's gymnasium_mamujoco/2halfcheetah (optional for Vaults written by to-vault)")
    og.add_argument("--tier", default=None, help="the tier name in the metadata (default: the uid)")
    og.add_argument("--agent-obsk", type=int, default=None,
                    help=f"MaMuJoCo observation depth of the data (default {OGMARL_AGENT_OBSK}, og-marl's gymnasium_mamujoco)")
    omar = sub.add_parser("omar", help="OMAR's per-agent .npy files -> an osd dataset")
    omar.add_argument("--dir", required=True, help="OMAR's <env> folder, holding <tier>/seed_<k>_data/")
    omar.add_argument("--task", required=True, help="omar-mpe/<scenario> for OMAR's particle world (trains, not "
                      "evaluated), or a MaMuJoCo task such as mamujoco/HalfCheetah-2x3")
    omar.add_argument("--tier", required=True, help="the tier folder, e.g. expert, medium, medium-replay, random")
    omar.add_argument("--seed", default=None, help="which seed_<k>_data (needed when there are several), or 'all'")
    omar.add_argument("--agent-obsk", type=int, default=None, help="MaMuJoCo only: the data's observation depth")
    omar.add_argument("--episode-steps", type=int, default=None,
                      help="the time limit: a done on this step of an episode is a timeout (default 25 MPE, 1000 MaMuJoCo)")
    for command in (og, omar):
        command.add_argument("--out", required=True, help="the osd dataset file to write (.npz)")
        command.add_argument("--force", action="store_true", help="overwrite an existing --out")
    vault = sub.add_parser("to-vault", help="an osd dataset -> an og-marl (flashbax) Vault")
    vault.add_argument("--dataset", required=True, help="the osd dataset (.npz path or <task>/<tier> in the cache)")
    vault.add_argument("--out", required=True, help="the Vault folder DIR/NAME.vlt")
    vault.add_argument("--uid", required=True, help="the dataset's name inside the Vault")
    vault.add_argument("--force", action="store_true", help="overwrite an existing uid")
    args = parser.parse_args(argv)
    try:
        if args.command == "to-vault":
            path = dataset_to_vault(args.dataset, args.out, args.uid, force=args.force)
            print(f"wrote Vault {path}")
            return
        out = pathlib.Path(args.out)
        if out.exists() and not args.force:  # before the conversion, not after it
            raise DatasetError(f"{out}: exists already; pass --force to overwrite it")
        if args.command == "og-marl":
            arrays, meta = vault_to_arrays(args.vault, args.uid, args.task, args.tier, args.agent_obsk)
        else:
            arrays, meta = omar_to_arrays(args.dir, args.task, args.tier, args.seed, args.agent_obsk, args.episode_steps)
        path = finish(out, arrays, meta, args.force)
    except DatasetError as err:
        raise SystemExit(f"convert: {err}") from None
    data = osd_common.load_dataset(str(path))
    m = data.meta
    score = (f"normalized score {m['normalized_score']:.1f}" if m.get("references", "ours") == "ours"
             else "no reference returns: scores are returns")
    print(f"wrote {path}: {m['task']} tier {m['tier']}, {m['transitions']} transitions, {m['episodes']} episodes, "
          f"return {m['return_mean']:.2f} ± {m['return_std']:.2f} ({score})"
          + (f"; {m['dropped_steps']} last steps without a next observation dropped" if m.get("dropped_steps") else ""))


if __name__ == "__main__":
    main()
