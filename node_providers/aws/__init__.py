"""Amazon EC2: `AWS` (config), offers (live and snapshot), `AWSCloud` (machines), split by concern:

- `config.py`   the typed `sky.AWS(...)` config
- `session.py`  sessions, credentials, botocore errors → typed errors
- `offers.py`   live offers (EC2 APIs) and the dated snapshot; never imports Ray
- `network.py`  what `prepare` makes: subnet choice, image, security group, key pair (random names)
- `ownership.py` proof that the group and key pair just made are exactly ours (`ResourceConflictError`)
- `cloud.py`    launch / describe / terminate instances that boot from user data
- `node_provider.py`  the Ray node provider (`AWSNodeProvider`), imported on first use
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "AWSNodeProvider":
        from node_providers.aws.node_provider import AWSNodeProvider

        return AWSNodeProvider
    raise AttributeError(name)
