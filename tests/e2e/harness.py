"""The end-to-end harness: the dev stack from ``addons.devstack`` under the names tests use."""

from addons.devstack import (
    ACCOUNT,
    BIN,
    REGION,
    Gateway,
    Moto,
    agent_client,
    agent_env,
    aws_cli,
    base_env,
    environment,
    free_port,
    stop,
    throwaway_database,
    wait_for_port,
)

__all__ = [
    "ACCOUNT",
    "BIN",
    "REGION",
    "Gateway",
    "Moto",
    "agent_client",
    "agent_env",
    "aws_cli",
    "base_env",
    "environment",
    "free_port",
    "stop",
    "throwaway_database",
    "wait_for_port",
]
