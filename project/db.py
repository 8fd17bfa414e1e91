"""Database tuning for the hot queries, and the planner's row estimates for the lists too long to count."""

from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connection as db_connection
from django.db import models
from django.db.backends.signals import connection_created
from django.db.models import Field, Lookup
from django.dispatch import receiver


@receiver(connection_created)
def no_parallel_plans(sender: Any, connection: Any, **kwargs: Any) -> None:
    """Every query of the product is an index lookup or a short range scan with a LIMIT. A parallel plan for one
    (PostgreSQL picks one for a batch's claim when its statistics are stale) starts background processes for each
    batch and costs far more than it saves."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET max_parallel_workers_per_gather = 0")


@Field.register_lookup
class AnyOf(Lookup):
    """`field__any=[...]`: one array parameter (`= ANY(%s)`) on PostgreSQL instead of one parameter per value (IN).

    Settling a batch updates hundreds of rows by id; building and quoting an IN list of that size costs the worker
    more than the UPDATE costs PostgreSQL. Other databases get the plain IN list."""

    lookup_name = "any"
    prepare_rhs = False

    def get_prep_lookup(self) -> list:
        return [self.lhs.output_field.get_prep_value(value) for value in self.rhs]

    def as_sql(self, compiler, connection) -> tuple[str, tuple]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        values = list(self.rhs)
        if not values:
            raise EmptyResultSet
        if connection.vendor == "postgresql":
            return f"{lhs} = ANY(%s)", (*lhs_params, values)
        return f"{lhs} IN ({', '.join(['%s'] * len(values))})", (*lhs_params, *values)


def is_postgresql() -> bool:
    """The hand-written SQL (each app's sql.py) is PostgreSQL's; other databases run its ORM twins."""
    return db_connection.vendor == "postgresql"


def table_rows_estimate(model: type[models.Model]) -> int | None:
    """PostgreSQL's estimate of a table's row count (from its statistics); None on other databases."""
    if not is_postgresql():
        return None
    with db_connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [model._meta.db_table])
        row = cursor.fetchone()
    return row[0] if row else None
