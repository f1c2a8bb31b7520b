"""Every name that crosses a process or machine boundary, spelled once.

Labels are what Ray nodes carry (`ray start --labels`), tags are what a cloud keeps on its
instances, environment variables are what a node's startup script exports for Ray and for
`sky.instance_info()`. One spelling each: a label and the tag holding the same fact share a key,
so a node is found the same way in Ray's node table and in the cloud's instance list.

This module imports nothing: the node side (`skyward_ray.node`) and every provider can use it.
"""

from __future__ import annotations

# -- labels and tags (one key for both) ----------------------------------------------------------
NODE_INDEX = "skyward/node-index"
INSTANCE_ID = "skyward/instance-id"
PROVIDER = "skyward/provider"
ACCELERATOR = "skyward/accelerator"
OFFER = "skyward/offer"
CLUSTER = "skyward/cluster"
OWNER = "skyward/owner"  # host/pid/start time of the process keeping the pool alive (`cluster.pool_state`)
STARTED = "skyward/started"  # when the pool was launched (epoch seconds)
PRICE = "skyward/price"  # USD per hour per node of the offer bought
# On machines started together by one launch call (EC2 RunInstances for many identical workers): the
# batch's first node index; a machine's own index is this plus its position in the batch (the cloud's
# launch index), which its cloud module turns back into `NODE_INDEX` when it lists the machine.
FIRST_INDEX = "skyward/first-index"
LAUNCH_TOKEN = "skyward/launch-token"  # one per node and launch attempt: finds a machine whose create answer was lost
NETWORK = "skyward/network"  # "global" on a RunPod pod made with global networking

# What a machine of a cloud without tags is named by (a RunPod pod's name, a Vast.ai label):
# `skyward-<cluster>-<role>-<index>` or `skyward:<cluster>/<role>/<index>`.
MACHINE_NAME_PREFIX = "skyward"

# Ray's node types, as the autoscaler's `available_node_types` would name them.
HEAD_TYPE = "skyward.head"
WORKER_TYPE = "skyward.worker"

# -- environment of a node (exported by the startup script; read by `sky.instance_info()`) --------
ENV_INSTANCE_ID = "SKYWARD_INSTANCE_ID"  # also the marker every process of a local machine inherits
ENV_NODE_IP = "SKYWARD_NODE_IP"
ENV_NODE_INDEX = "SKYWARD_NODE_INDEX"
ENV_TOTAL_NODES = "SKYWARD_TOTAL_NODES"
ENV_HEAD_IP = "SKYWARD_HEAD_IP"
ENV_PROVIDER = "SKYWARD_PROVIDER"
ENV_ACCELERATOR = "SKYWARD_ACCELERATOR"
ENV_ACCELERATOR_COUNT = "SKYWARD_ACCELERATOR_COUNT"
ENV_SPOT = "SKYWARD_SPOT"
ENV_CLUSTER = "SKYWARD_CLUSTER"
ENV_PYTHON = "SKYWARD_PYTHON"
ENV_MACHINE_DIR = "SKYWARD_MACHINE_DIR"  # a simulated or local machine's own directory
ENV_MACHINE_TAGS = "SKYWARD_POD_TAGS"  # a RunPod pod's tags, encoded, in the pod's own environment

# Reserved on a node: the boot script sets these itself, and `sky.Image(env=...)` may not override
# them (a task's environment must not change the cluster's auth or what skyward tells tasks).
ENV_PREFIX = "SKYWARD_"
RAY_AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")

# A login user on the nodes (`ssh_user`): a plain POSIX name, safe bare in sshd_config, a shell and
# an `ssh user@host` argument (never a leading '-').
LOGIN_USER = r"[A-Za-z_][A-Za-z0-9_.-]{0,31}"

# -- the driver's heartbeat in Ray's internal KV (read by the head's watchdog) -------------------
HEARTBEAT_NAMESPACE = "skyward"
HEARTBEAT_KEY = "heartbeat"

# -- this process's own settings -----------------------------------------------------------------
ENV_QUIET = "SKYWARD_QUIET"
ENV_NODE_LOGS = "SKYWARD_NODE_LOGS"  # 1: Ray's "(raylet)" messages from the nodes reach the driver's stderr
ENV_KEEP_NODE_LOGS = "SKYWARD_KEEP_NODE_LOGS"
ENV_RUNTIME_DIR = "SKYWARD_RUNTIME_DIR"  # this user's private dir for local pools and pool state files
