"""`field__any=[...]`: one array parameter (`= ANY(%s)`) on PostgreSQL instead of one parameter per value (`IN`).

Settling a batch updates hundreds of rows by id; building and quoting an IN list of that size costs the worker more
than the UPDATE costs PostgreSQL. Other databases get the plain IN list."""

from django.core.exceptions import EmptyResultSet
from django.db.models import Field, Lookup


@Field.register_lookup
class AnyOf(Lookup):
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
