"""The paginator of the lists that grow to millions of rows (the delivery logs, the users)."""

from __future__ import annotations

from functools import cached_property

from django.core.paginator import Paginator
from django.db.models import QuerySet

from project.db import table_rows_estimate


class CappedPaginator(Paginator):
    """Never a COUNT(*) over a whole large table. An unfiltered list on PostgreSQL takes the planner's row estimate;
    any other list counts at most COUNT_CAP + 1 rows (the pages go that far, and the page says "more than"), or, with
    `exact`, every row (for lists already bounded otherwise, such as a user search). Small tables count exactly."""

    ESTIMATE_FROM = 100_000
    COUNT_CAP = 10_000
    estimated = False  # set when `count` is the planner's estimate

    def __init__(self, *args, exact: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.exact = exact

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        if not queryset.query.where:
            estimate = table_rows_estimate(queryset.model)
            if estimate is not None and estimate >= self.ESTIMATE_FROM:
                self.estimated = True
                return estimate
        if self.exact:
            return super().count
        return queryset.order_by()[: self.COUNT_CAP + 1].count()

    @property
    def capped(self) -> bool:
        return not self.exact and not self.estimated and self.count > self.COUNT_CAP
