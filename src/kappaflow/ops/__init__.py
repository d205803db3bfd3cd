"""The operator library: processors an app composes instead of writing its own. Windows
(`Tumbling`, `Hopping`, `Sliding`, `Session`) and `Measure`s (`count`, `total`,
`smallest`, `largest`, `mean`, `distinct`, `fold`) make an `Aggregate`; `TopK` ranks a
field per window; `Latest` keeps each key's latest event; `Filter`, `Map`, `FlatMap`
and `Join` are steps a `Pipeline` runs before its processors. The guide is
docs/operators.md."""

from kappaflow.ops.aggregate import Aggregate
from kappaflow.ops.fanout import Fanout
from kappaflow.ops.latest import Latest
from kappaflow.ops.measures import Measure, count, distinct, fold, largest, mean, smallest, total
from kappaflow.ops.steps import Filter, FlatMap, Join, Map, Pipeline
from kappaflow.ops.topk import TopK
from kappaflow.ops.windows import Hopping, Session, Sliding, Tumbling

__all__ = [
    "Aggregate", "Fanout", "Filter", "FlatMap", "Hopping", "Join", "Latest", "Map", "Measure",
    "Pipeline", "Session", "Sliding", "TopK", "Tumbling", "count", "distinct", "fold",
    "largest", "mean", "smallest", "total",
]  # fmt: skip
