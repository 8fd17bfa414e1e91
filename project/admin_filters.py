"""A list filter with a few named choices, each a Q object: shared by the admins of several apps."""

from django.contrib import admin
from django.db.models import Q, QuerySet


def choice_filter(title: str, parameter_name: str, choices: dict[str, tuple[str, Q]]) -> type[admin.SimpleListFilter]:
    class ChoiceFilter(admin.SimpleListFilter):
        def lookups(self, request, model_admin) -> list[tuple[str, str]]:
            return [(value, label) for value, (label, _) in choices.items()]

        def queryset(self, request, queryset: QuerySet) -> QuerySet:
            choice = choices.get(self.value() or "")
            return queryset.filter(choice[1]) if choice else queryset

    ChoiceFilter.title = title
    ChoiceFilter.parameter_name = parameter_name
    return ChoiceFilter
