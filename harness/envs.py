"""Stage 2 of a run: build the environments.

Every env the harness trains on or evaluates comes from here, so the Gymnasium-Robotics
registration, the env-id checks and the vectorization live in one place.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import os

import gymnasium as gym
import numpy as np

from harness.errors import HarnessError


@functools.cache
def register_fetch_envs() -> None:
    """Register Gymnasium-Robotics' envs with Gymnasium, once per process, when the first env is needed
    (not at import: importing the harness changes no process state)."""
    # Headless machines have no window system for MuJoCo's default (GLFW) renderer; EGL renders
    # offscreen (videos). Read by mujoco at import, so it is set before gymnasium-robotics loads it.
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"
    check_renderer(os.environ["MUJOCO_GL"] if "MUJOCO_GL" in os.environ else "")
    # gymnasium-robotics prints a notice about Adroit (not Fetch) reward changes on import;
    # it is noise for every user of this harness, so it is swallowed.
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            import gymnasium_robotics
    except (ImportError, OSError, RuntimeError, AttributeError) as exc:  # what MuJoCo's renderer modules raise
        raise HarnessError(
            f"MuJoCo cannot load its renderer MUJOCO_GL={os.environ.get('MUJOCO_GL', '')!r} ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}); {RENDERERS_ACCEPTED}"
        ) from None

    gym.register_envs(gymnasium_robotics)


# MuJoCo's names for its OpenGL back-ends on Linux (mujoco/rendering/classic/gl_context.py), and the shared
# library each needs; an unknown name or a missing library fails inside MuJoCo's import with a traceback.
RENDERER_LIBRARIES = {"egl": "EGL", "osmesa": "OSMesa", "glx": "GL", "glfw": None}
RENDERERS_OFF = ("disable", "disabled", "off", "false", "0")
RENDERERS_ACCEPTED = (
    "accepted: MUJOCO_GL=egl (the harness's choice without a display), osmesa, glx, glfw, or disable "
    "(no videos); unset, it is egl without a display and glfw with one"
)


def check_renderer(value: str) -> None:
    """One line for a ``MUJOCO_GL`` that MuJoCo would refuse, or whose library is not installed."""
    import ctypes.util

    name = value.lower().strip()
    if name in RENDERERS_OFF or name in ("", "enable", "enabled", "on", "true", "1"):
        return
    if name not in RENDERER_LIBRARIES:
        raise HarnessError(f"MUJOCO_GL={value!r} is not a MuJoCo renderer; {RENDERERS_ACCEPTED}")
    library = RENDERER_LIBRARIES[name]
    if library is not None and ctypes.util.find_library(library) is None:
        raise HarnessError(
            f"MUJOCO_GL={value} needs the {library} library, which is not installed here; install it, or unset "
            "MUJOCO_GL (the harness then renders with egl without a display)"
        )


FETCH_TASKS = ("Reach", "Push", "PickAndPlace", "Slide")
FETCH_ENV_IDS = tuple(f"Fetch{task}{dense}-v4" for task in FETCH_TASKS for dense in ("", "Dense"))
GOAL_KEYS = ("observation", "achieved_goal", "desired_goal")


def validate_env_id(env_id: str, her: bool = False) -> None:
    """Accept any registered env with continuous actions; HER needs a goal-conditioned one."""
    register_fetch_envs()
    if env_id not in gym.registry:
        raise HarnessError(
            f"unknown env '{env_id}'; the Fetch tasks are: {', '.join(FETCH_ENV_IDS)} "
            "(any registered Gymnasium env with continuous actions works without --her)"
        )
    spaces(env_id)  # an env that cannot be built (a missing extra such as Box2D) fails here, before a run
    if her and not is_goal_conditioned(env_id):
        raise HarnessError(
            f"--her needs a goal-conditioned env (dict observations with {', '.join(GOAL_KEYS)}); "
            f"'{env_id}' is not one. Goal-conditioned: {', '.join(FETCH_ENV_IDS)}"
        )


def her_reward_warning(env_id: str, her: bool) -> str | None:
    """The chapter's first "Common Issue": HER relabels goals for a sparse reward (-1 until the goal
    is reached); on a Dense env the reward already says how close each step got."""
    if her and "Dense" in env_id:
        return (
            f"--her on {env_id}: HER needs the sparse reward; the chapter uses {env_id.replace('Dense', '')} "
            "(a dense reward already tells the agent how close it got)"
        )
    return None


def episode_steps(env_id: str) -> int | None:
    """The env's time limit (50 on the Fetch tasks), or None where it has none."""
    register_fetch_envs()
    return gym.spec(env_id).max_episode_steps


def validate_her_start(env_id: str, n_envs: int, learning_starts: int, what: str = "--her") -> None:
    """SB3's HerReplayBuffer samples only from finished episodes: the first gradient step must come after
    every env has ended one (all the envs of a DummyVecEnv end their fixed-length episodes together).
    ``what`` names what asked for that buffer: HER, or n-step returns (harness.her_replay)."""
    steps = episode_steps(env_id)
    if steps and learning_starts < steps * n_envs:
        sampler = "HER" if what == "--her" else "the episode buffer"
        raise HarnessError(
            f"{what} with {n_envs} env(s) needs learning_starts >= {steps * n_envs} (one finished {steps}-step "
            f"episode in every env before {sampler} can sample), got {learning_starts}"
        )


@functools.cache
def spaces(env_id: str) -> tuple[gym.Space, gym.Space]:
    """The env's (observation, action) spaces, from one env built and closed; a HarnessError naming
    what is missing when Gymnasium cannot build it."""
    register_fetch_envs()
    try:
        env = gym.make(env_id)
    except (gym.error.Error, ImportError) as exc:
        raise HarnessError(f"env '{env_id}' cannot be built: {exc}") from None
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def is_goal_conditioned(env_id: str) -> bool:
    space = spaces(env_id)[0]
    return isinstance(space, gym.spaces.Dict) and all(k in space.spaces for k in GOAL_KEYS)


def make_env(env_id: str, render: bool = False) -> gym.Env:
    """One env, as ``gym.make`` builds it (Fetch v4 episodes are 50 steps); ``render`` gives RGB frames.
    A Fetch env reads its observation with :class:`FetchObservationIndex` (the same values, bit for bit)."""
    register_fetch_envs()
    env = gym.make(env_id, render_mode="rgb_array") if render else gym.make(env_id)
    if not isinstance(env.action_space, gym.spaces.Box):
        env.close()
        raise HarnessError(f"env '{env_id}' has discrete actions; SAC and TQC need continuous (Box) actions")
    FetchObservationIndex.install(env.unwrapped)
    return env


class FetchObservationIndex:
    """Gymnasium-Robotics' Fetch observation and gripper blocking with the MuJoCo ids looked up once.

    ``MujocoFetchEnv.generate_mujoco_observations`` finds every id by name at every step: 15 joint
    look-ups each for positions and velocities (``robot_get_obs``, of which only the two finger joints
    are used) and one per site, about a fifth of an env step in Python. ``_step_callback`` does the same
    for the two fingers of a blocked gripper. This computes the same arrays, with the same operations
    in the same order, from indices resolved when the env is built; ``tests/test_envs.py`` checks that
    observations, rewards and infos stay identical to the library's over whole episodes of every
    Fetch task. Envs that are not Gymnasium-Robotics' MuJoCo Fetch envs are left as they are.
    """

    def __init__(self, robot):
        import mujoco

        self.jac_site = mujoco.mj_jacSite  # called every step: looked up once
        model = robot.model
        site = functools.partial(mujoco.mj_name2id, model, mujoco.mjtObj.mjOBJ_SITE)
        self.grip_site, self.object_site = site("robot0:grip"), site("object0") if robot.has_object else -1
        robot_joints = [
            mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
            for name in robot._model_names.joint_names
            if name.startswith("robot")
        ]
        sizes = {mujoco.mjtJoint.mjJNT_FREE: (7, 6), mujoco.mjtJoint.mjJNT_BALL: (4, 4)}  # as mujoco_utils counts
        qpos, qvel = [], []
        for joint in robot_joints:
            npos, nvel = sizes.get(model.jnt_type[joint], (1, 1))
            qpos += range(model.jnt_qposadr[joint], model.jnt_qposadr[joint] + npos)
            qvel += range(model.jnt_dofadr[joint], model.jnt_dofadr[joint] + nvel)
        # robot_get_obs stacks every robot joint's values; the observation keeps the last two (the fingers)
        self.finger_qpos, self.finger_qvel = np.array(qpos[-2:]), np.array(qvel[-2:])
        fingers = ("robot0:l_gripper_finger_joint", "robot0:r_gripper_finger_joint")
        self.blocked_qpos = [
            int(model.jnt_qposadr[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)]) for name in fingers
        ]

    @classmethod
    def install(cls, robot) -> None:
        from gymnasium_robotics.envs.fetch.fetch_env import MujocoFetchEnv

        if isinstance(robot, MujocoFetchEnv):
            index = cls(robot)
            robot.generate_mujoco_observations = functools.partial(index.observations, robot)
            robot._step_callback = functools.partial(index.step_callback, robot)

    def _site_velocity(self, robot, site_id: int, rotational: bool):
        jac = np.zeros((3, robot.model.nv))
        self.jac_site(robot.model, robot.data, None if rotational else jac, jac if rotational else None, site_id)
        return jac @ robot.data.qvel

    def observations(self, robot):
        from gymnasium_robotics.utils import rotations

        data = robot.data
        grip_pos = data.site_xpos[self.grip_site]
        dt = robot.n_substeps * robot.model.opt.timestep
        grip_velp = self._site_velocity(robot, self.grip_site, False) * dt
        if robot.has_object:
            object_pos = data.site_xpos[self.object_site]
            object_rot = rotations.mat2euler(data.site_xmat[self.object_site].reshape(3, 3))
            object_velp = self._site_velocity(robot, self.object_site, False) * dt
            object_velr = self._site_velocity(robot, self.object_site, True) * dt
            object_rel_pos = object_pos - grip_pos
            object_velp -= grip_velp
        else:
            object_pos = object_rot = object_velp = object_velr = object_rel_pos = np.zeros(0)
        gripper_state = data.qpos[self.finger_qpos]
        gripper_vel = data.qvel[self.finger_qvel] * dt
        return (
            grip_pos,
            object_pos,
            object_rel_pos,
            gripper_state,
            object_rot,
            object_velp,
            object_velr,
            grip_velp,
            gripper_vel,
        )

    def step_callback(self, robot):
        if robot.block_gripper:
            for address in self.blocked_qpos:
                robot.data.qpos[address] = 0.0
            robot._mujoco.mj_forward(robot.model, robot.data)


def make_vec_env(env_id: str, n_envs: int, seed: int, held_object_start: float = 0.0):
    """``n_envs`` copies in one process, seeded ``seed, seed+1, ...``, with SB3's Monitor for episode stats;
    ``held_object_start`` > 0 (training envs of PickAndPlace) wraps each in :class:`HeldObjectStart`."""
    from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env

    if held_object_start > 0:
        return sb3_make_vec_env(lambda: HeldObjectStart(make_env(env_id), held_object_start), n_envs=n_envs, seed=seed)
    return sb3_make_vec_env(lambda: make_env(env_id), n_envs=n_envs, seed=seed)


class HeldObjectStart(gym.Wrapper):
    """Training envs only: a share of the episodes start with the object held between the fingers.

    The HER paper (Andrychowicz et al. 2017) started half of its pick-and-place training episodes
    this way. About half of PickAndPlace's goals are in the air; a policy whose exploration never
    closes the gripper around the object learns to push it to the table goals and stops there. At
    reset the object is moved to the grip site and the fingers close over a few physics steps
    before the first observation; the goal and the episode's 50 steps are the env's own. The share
    is drawn from the env's own seeded generator, so runs stay reproducible.
    """

    CLOSE_STEPS = 10  # env-step-long physics rounds with the gripper commanded shut

    def __init__(self, env: gym.Env, share: float):
        super().__init__(env)
        self.share = share

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        robot = self.env.unwrapped
        if robot.np_random.uniform() < self.share:
            obs = self._hold_object(robot)
        return obs, info

    @staticmethod
    def _hold_object(robot):
        qpos = robot._utils.get_joint_qpos(robot.model, robot.data, "object0:joint").copy()
        qpos[:3] = robot._utils.get_site_xpos(robot.model, robot.data, "robot0:grip")
        robot._utils.set_joint_qpos(robot.model, robot.data, "object0:joint", qpos)
        robot._utils.set_joint_qvel(robot.model, robot.data, "object0:joint", np.zeros(6))
        close = np.array([0.0, 0.0, 0.0, -1.0])
        for _ in range(HeldObjectStart.CLOSE_STEPS):
            robot._set_action(close)
            robot._mujoco_step(close)
        return robot._get_obs()


# Per-episode bookkeeping of the wrappers gym.make and SB3 put around an env: TimeLimit's step
# count, Monitor's rewards so far (an episode's return is logged when it ends) and totals.
WRAPPER_FIELDS = (
    "_elapsed_steps",
    "rewards",
    "needs_reset",
    "episode_returns",
    "episode_lengths",
    "episode_times",
    "total_steps",
)


def env_state(env: gym.Env) -> dict:
    """Everything the next steps of ``env`` depend on, mid-episode included: the env's random
    generator, its goal, its wrappers' episode bookkeeping and, for a MuJoCo env, every fixed-size
    array of its ``MjData``. Saving only the integration state (positions, velocities, warm start)
    is not enough: Fetch's next action reads body positions that ``mj_step`` left one substep old,
    and recomputing them with ``mj_forward`` makes the continuation differ in the last bits."""
    robot = env.unwrapped
    state: dict = {"np_random": robot.np_random.bit_generator.state}
    if hasattr(robot, "goal"):
        state["goal"] = copy.deepcopy(robot.goal)
    data = getattr(robot, "data", None)
    if data is not None and type(data).__name__ == "MjData":
        # The constraint arrays (efc_*) live in MjData's arena, sized per step and rebuilt by every mj_step.
        state["mujoco"] = {
            "time": data.time,
            **{
                name: value.copy()
                for name in dir(data)
                if not name.startswith("_")
                for value in [getattr(data, name)]
                if isinstance(value, np.ndarray)
            },
        }
    state["wrappers"] = []
    layer = env
    while isinstance(layer, gym.Wrapper):
        state["wrappers"].append({k: copy.deepcopy(v) for k, v in vars(layer).items() if k in WRAPPER_FIELDS})
        layer = layer.env
    return state


def restore_env_state(env: gym.Env, state: dict) -> None:
    """Put ``env`` (built like the one saved, and reset) back where :func:`env_state` found it."""
    robot = env.unwrapped
    robot.np_random.bit_generator.state = state["np_random"]
    if "goal" in state:
        robot.goal = copy.deepcopy(state["goal"])
    if "mujoco" in state:
        saved = dict(state["mujoco"])
        robot.data.time = saved.pop("time")
        for name, value in saved.items():
            target = getattr(robot.data, name)
            if target.shape == value.shape:
                target[...] = value
    layer = env
    for fields in state["wrappers"]:
        vars(layer).update(copy.deepcopy(fields))
        layer = layer.env


def goal_distance(obs) -> float:
    """Distance between achieved and desired goal in a goal-conditioned observation, else NaN."""
    if isinstance(obs, dict) and "achieved_goal" in obs and "desired_goal" in obs:
        achieved = np.asarray(obs["achieved_goal"], dtype=np.float64)
        desired = np.asarray(obs["desired_goal"], dtype=np.float64)
        return float(np.linalg.norm(achieved - desired))
    return float("nan")
