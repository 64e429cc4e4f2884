"""Round partitions are the numbers '1', '2', ...: the check every round asset makes of its key."""

import dagster as dg


def is_round_key(key: str) -> bool:
    return key.isdigit() and int(key) >= 1 and str(int(key)) == key


def partition_round(context: dg.AssetExecutionContext) -> int:
    """The round number of the partition being materialized; a clear, unretried failure otherwise."""
    key = context.partition_key
    if not is_round_key(key):
        raise dg.Failure(description=f"partition {key!r} is not a round number: rounds are partitions '1', '2', "
                                     "... run in order; delete it (the sensor add_next_round_partitions does) and "
                                     "launch the partition it proposes", allow_retries=False)
    return int(key)
