"""The admin's audience pages: an audience's members (browsed and searched by keyset, never counted) and a user's
membership changes. Members are added through the real ingestion service; nothing of ours is mocked."""

from __future__ import annotations

import re

import pytest
from django.db import connection as db_connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from audiences.models import Audience, Membership, MembershipChange, User
from audiences.selectors import CHANGES_PER_PAGE, MEMBER_SEARCH_CANDIDATES, MEMBERS_PER_PAGE
from audiences.services import audience_create, audience_delete, user_identities_update
from integrations.configurations import configuration_create
from integrations.connections import connection_create
from integrations.outbox import OUTBOX

from ..factories import apply, join, leave
from ..support.admin_pages import result_rows, staff_client, url

pytestmark = pytest.mark.django_db

BIG_TABLES = ("audiences_membership", "audiences_membershipchange", "audiences_user")


def members_url(audience: Audience, **params: str) -> str:
    query = "&".join(f"{name}={value}" for name, value in params.items())
    return url("audiences_audience_members", audience.pk) + (f"?{query}" if query else "")


def changes_url(user: User, **params: object) -> str:
    query = "&".join(f"{name}={value}" for name, value in params.items())
    return url("audiences_user_changes", user.pk) + (f"?{query}" if query else "")


def listed_users(page: str) -> list[str]:
    """The user ids in the rows of a members page, in order."""
    return re.findall(r'<th scope="row" class="field-user_id"><a href="[^"]+">([^<]+)</a>', result_rows(page))


def listed_changes(page: str) -> list[int]:
    return [int(pk) for pk in re.findall(r'<th scope="row" class="field-change">#(\d+)</th>', result_rows(page))]


def link(page: str, link_id: str) -> str | None:
    found = re.search(rf'<a href="([^"]+)" id="{link_id}"', page)
    return found.group(1).replace("&amp;", "&") if found else None


def walk(client: Client, start: str, next_id: str, parse) -> list:
    """Every row, following the next-page links from `start`."""
    rows, next_url, pages = [], start, 0
    while next_url:
        page = client.get(next_url).text
        rows += parse(page)
        next_url = link(page, next_id)
        pages += 1
        assert pages < 100
    return rows


def add_members(audience: Audience, *user_ids: str) -> None:
    apply(audience, *(join(user_id, CustomerId=f"c-{user_id}") for user_id in user_ids))


def big_table_counts(queries: CaptureQueriesContext) -> list[str]:
    return [
        query["sql"]
        for query in queries.captured_queries
        if "COUNT(" in query["sql"].upper() and any(table in query["sql"] for table in BIG_TABLES)
    ]


@pytest.fixture
def other_audience() -> Audience:
    return audience_create(internal_name="frequent_travellers", external_name="FrequentTravellers")


# --- the members page -------------------------------------------------------------------------------------------


def test_the_members_page_lists_current_members_with_their_identities_and_last_change(admin_client, audience):
    apply(audience, join("p.fogg138", 1764321660, CustomerId="138", Email="fogg@reform.club"))
    apply(audience, join("passepartout", 1764321700), join("fix", 1764321800))
    apply(audience, leave("fix", 1764321900))

    page = admin_client.get(members_url(audience)).text

    assert listed_users(page) == ["p.fogg138", "passepartout"]
    assert "Members of LowEngagement" in page
    assert "CustomerId: 138, Email: fogg@reform.club" in page
    assert "none (anonymous)" in page
    assert "1764321660" in page and "2025-11-28 09:21 UTC" in page
    assert '<p id="member-total">2 members in all' in page
    assert link(page, "next-page") is None and link(page, "first-page") is None


def test_the_members_page_shows_only_this_audiences_members(admin_client, audience, other_audience):
    add_members(audience, "p.fogg138")
    add_members(other_audience, "aouda", "passepartout")

    assert listed_users(admin_client.get(members_url(audience)).text) == ["p.fogg138"]
    assert listed_users(admin_client.get(members_url(other_audience, q="p")).text) == ["passepartout"]


def test_each_member_links_to_the_user_and_to_its_changes_in_this_audience(admin_client, audience):
    add_members(audience, "p.fogg138")
    user = User.objects.get(external_id="p.fogg138")

    page = admin_client.get(members_url(audience)).text

    assert f'href="{url("audiences_user_change", user.pk)}"' in page
    assert f'href="{changes_url(user, audience=audience.pk)}"' in page


def test_next_page_walks_every_member_once_in_the_order_they_joined(admin_client, audience):
    user_ids = [f"member-{n:03}" for n in range(MEMBERS_PER_PAGE * 2 + 17)]
    add_members(audience, *reversed(user_ids))

    first = admin_client.get(members_url(audience)).text
    walked = walk(admin_client, members_url(audience), "next-page", listed_users)

    assert len(listed_users(first)) == MEMBERS_PER_PAGE
    assert walked == list(reversed(user_ids))


def test_a_next_page_link_is_stable_while_members_join_and_leave(admin_client, audience):
    add_members(audience, *(f"member-{n:03}" for n in range(MEMBERS_PER_PAGE + 10)))
    first = admin_client.get(members_url(audience)).text
    next_url = link(first, "next-page")
    second = listed_users(admin_client.get(next_url).text)

    apply(audience, leave("member-000"), leave("member-001"))  # on the first page
    add_members(audience, "late-joiner")

    again = admin_client.get(next_url).text
    assert listed_users(again) == [*second, "late-joiner"]
    assert link(again, "first-page") == members_url(audience)


def test_an_unreadable_after_shows_the_first_page(admin_client, audience):
    add_members(audience, "p.fogg138")

    page = admin_client.get(members_url(audience, after="not-a-number")).text

    assert listed_users(page) == ["p.fogg138"]


def test_search_finds_a_member_by_exact_user_id_or_by_its_beginning(admin_client, audience):
    add_members(audience, "p.fogg138", "p.fogg1380", "passepartout", "P.FOGG-upper")
    apply(audience, leave("p.fogg1380"))

    exact = admin_client.get(members_url(audience, q="p.fogg138")).text
    prefix = admin_client.get(members_url(audience, q="p.")).text

    assert listed_users(exact) == ["p.fogg138"]
    assert listed_users(prefix) == ["p.fogg138"]  # a former member is not listed; the search is case-sensitive
    assert 'value="p."' in prefix and 'for="searchbar"' in prefix
    assert "No members whose user id starts with “nobody”" in admin_client.get(members_url(audience, q="nobody")).text


def test_search_treats_like_wildcards_as_plain_characters(admin_client, audience):
    add_members(audience, "100%_sure", "100x")

    assert listed_users(admin_client.get(members_url(audience, q="100%_")).text) == ["100%_sure"]
    assert listed_users(admin_client.get(members_url(audience, q="100_")).text) == []


def test_search_results_page_by_user_id(admin_client, audience):
    user_ids = sorted(f"traveller-{n:03}" for n in range(MEMBERS_PER_PAGE + 30))
    add_members(audience, *reversed(user_ids), "stay-at-home")

    walked = walk(admin_client, members_url(audience, q="traveller-"), "next-page", listed_users)

    assert walked == user_ids


def test_search_goes_on_past_matching_users_who_are_not_members(admin_client, audience, other_audience):
    """Each search page looks at a fixed number of users with the prefix: when none of them is a member, the page is
    short and Next page goes on."""
    add_members(other_audience, *(f"user-a{n:04}" for n in range(MEMBER_SEARCH_CANDIDATES + 5)))
    add_members(audience, "user-b0001", "user-b0002")

    first = admin_client.get(members_url(audience, q="user-")).text
    walked = walk(admin_client, members_url(audience, q="user-"), "next-page", listed_users)

    assert listed_users(first) == []
    assert "None of the users looked at on this page is a member" in first
    assert walked == ["user-b0001", "user-b0002"]


def test_a_deleted_audience_still_shows_its_members(admin_client, audience):
    add_members(audience, "p.fogg138")
    audience_delete(audience=audience, outbox=OUTBOX)

    page = admin_client.get(members_url(audience)).text

    assert listed_users(page) == ["p.fogg138"]
    assert "as they were when the audience was deleted" in page


def test_the_audience_page_links_to_its_members_and_lists_its_connections_with_their_status(admin_client, audience):
    configuration = configuration_create(name="Travel", access_key_id="AKIAADMINTEST0000001", secret_access_key="s")
    connection = connection_create(
        audience=audience, configuration=configuration, stream_name="audience-stream", status="paused"
    )
    add_members(audience, "p.fogg138")

    page = admin_client.get(url("audiences_audience_change", audience.pk)).text

    assert f'<a href="{members_url(audience)}" id="members-link">Members</a>' in page
    assert "1 current member." in page
    assert url("integrations_connection_change", connection.pk) in page
    assert '<span class="badge badge-muted">paused</span>' in page


# --- a user's membership changes --------------------------------------------------------------------------------


def test_a_users_changes_are_listed_newest_first_with_identities_before_and_after(admin_client, audience):
    apply(audience, join("p.fogg138", 1764321660, CustomerId="138"))
    apply(audience, join("p.fogg138", 1764321700, CustomerId="138", Email="fogg@reform.club"))
    apply(audience, leave("p.fogg138", 1764321800))
    user = User.objects.get(external_id="p.fogg138")
    joined, changed, left = MembershipChange.objects.filter(user=user).order_by("pk")

    page = admin_client.get(changes_url(user)).text

    assert listed_changes(page) == [left.pk, changed.pk, joined.pk]
    rows = result_rows(page).split('<th scope="row"')[1:]
    assert "left" in rows[0] and "1764321800" in rows[0] and "2025-11-28 09:23 UTC" in rows[0]
    assert "identities changed" in rows[1]
    after, previous = rows[1].split('class="field-identities">')[1].split('class="field-previous_identities">')
    assert "Email: " in after and "fogg@reform.club" in after
    assert "CustomerId: " in previous and "Email" not in previous
    assert "joined" in rows[2] and rows[2].split('class="field-previous_identities">')[1].startswith("-")
    assert "Membership changes of p.fogg138" in page


def test_the_changes_filter_by_audience(admin_client, audience, other_audience):
    add_members(audience, "p.fogg138")
    add_members(other_audience, "p.fogg138", "aouda")
    user_identities_update(
        user_id="p.fogg138", identities={"CustomerId": "new"}, outbox=OUTBOX
    )  # one change in each audience
    user = User.objects.get(external_id="p.fogg138")
    mine = list(
        MembershipChange.objects.filter(user=user, audience=audience).order_by("-pk").values_list("pk", flat=True)
    )

    everything = admin_client.get(changes_url(user)).text
    filtered = admin_client.get(changes_url(user, audience=audience.pk)).text

    assert len(listed_changes(everything)) == 4
    assert listed_changes(filtered) == mine
    assert "Membership changes of p.fogg138 in LowEngagement" in filtered
    assert f'<option value="{audience.pk}" selected>' in filtered
    assert 'for="audience-filter"' in filtered


@pytest.mark.parametrize("filtered", [False, True], ids=["all audiences", "one audience"])
def test_older_changes_page_by_keyset(admin_client, audience, other_audience, filtered):
    for n in range(CHANGES_PER_PAGE + 7):
        apply(audience, join("p.fogg138", 1764321660 + n, CustomerId=str(n)))
        apply(other_audience, join("p.fogg138", 1764321660 + n))
    user = User.objects.get(external_id="p.fogg138")
    expected = MembershipChange.objects.filter(user=user).order_by("-pk")
    if filtered:
        expected = expected.filter(audience=audience)
    params = {"audience": audience.pk} if filtered else {}

    first = admin_client.get(changes_url(user, **params)).text
    walked = walk(admin_client, changes_url(user, **params), "older-page", listed_changes)

    assert len(listed_changes(first)) == CHANGES_PER_PAGE
    assert walked == list(expected.values_list("pk", flat=True))
    last_page = admin_client.get(link(first, "older-page")).text
    assert link(last_page, "newest-page") == changes_url(user, **params)


def test_the_users_page_shows_its_latest_changes_and_links_to_them_all(admin_client, audience):
    for n in range(12):
        apply(audience, join("p.fogg138", 1764321660 + n, CustomerId=str(n)))
    user = User.objects.get(external_id="p.fogg138")
    newest = list(MembershipChange.objects.filter(user=user).order_by("-pk").values_list("pk", flat=True))

    page = admin_client.get(url("audiences_user_change", user.pk)).text

    assert listed_changes(page) == newest[:10]
    assert f'<a href="{changes_url(user)}" id="changes-link">Membership changes</a>' in page
    assert f'href="{changes_url(user, audience=audience.pk)}"' in page  # from "Member of"
    assert admin_client.post(url("audiences_user_change", user.pk), {"external_id": "x"}).status_code == 403


# --- permissions ------------------------------------------------------------------------------------------------


def test_the_pages_need_a_login(client, audience):
    add_members(audience, "p.fogg138")
    user = User.objects.get()

    for page in (members_url(audience), changes_url(user)):
        response = client.get(page)
        assert response.status_code == 302 and response["Location"].startswith(url("login"))


def test_the_members_page_needs_a_view_permission_on_audiences_and_on_users(audience):
    add_members(audience, "p.fogg138")
    audiences_only = staff_client("audiences-only", "audiences.view_audience")
    users_only = staff_client("users-only", "audiences.view_user")
    viewer = staff_client("viewer", "audiences.view_audience", "audiences.view_user")

    assert audiences_only.get(members_url(audience)).status_code == 403
    assert users_only.get(members_url(audience)).status_code == 403
    assert 'id="members-link"' not in audiences_only.get(url("audiences_audience_change", audience.pk)).text
    assert listed_users(viewer.get(members_url(audience)).text) == ["p.fogg138"]


def test_the_changes_page_needs_a_view_permission_on_users(audience):
    add_members(audience, "p.fogg138")
    user = User.objects.get()
    audiences_only = staff_client("audiences-only", "audiences.view_audience")
    users_only = staff_client("users-only", "audiences.view_user")

    assert audiences_only.get(changes_url(user)).status_code == 403
    page = users_only.get(changes_url(user)).text
    assert len(listed_changes(page)) == 1
    assert url("audiences_audience_change", audience.pk) not in page  # the audience's name, without a link


def test_an_unknown_audience_or_user_goes_back_to_the_list(admin_client):
    assert admin_client.get(url("audiences_audience_members", 999999)).status_code == 302
    assert admin_client.get(url("audiences_user_changes", 999999)).status_code == 302


# --- cost: a fixed number of queries, each reading one page through an index, and never a count -----------------


def page_queries(client: Client, page: str) -> CaptureQueriesContext:
    with CaptureQueriesContext(db_connection) as queries:
        assert client.get(page).status_code == 200
    return queries


def test_the_members_page_takes_the_same_queries_for_5_or_150_members(
    admin_client, audience, django_assert_max_num_queries
):
    add_members(audience, *(f"member-{n:03}" for n in range(5)))
    few = page_queries(admin_client, members_url(audience))
    few_search = page_queries(admin_client, members_url(audience, q="member-"))

    add_members(audience, *(f"member-{n:03}" for n in range(5, 150)))
    after = Membership.objects.filter(audience=audience).order_by("pk").values_list("pk", flat=True)[20]
    for page, bound in (
        (members_url(audience), len(few)),
        (members_url(audience, after=after), len(few)),
        (members_url(audience, q="member-"), len(few_search)),
        (members_url(audience, q="member-", after="member-050"), len(few_search)),
    ):
        with django_assert_max_num_queries(bound):
            queries = page_queries(admin_client, page)
        assert big_table_counts(queries) == []
        for query in queries.captured_queries:
            if "audiences_membership" in query["sql"] and 'user_id" IN (' not in query["sql"]:
                assert "LIMIT" in query["sql"], query["sql"]


def test_the_changes_pages_take_the_same_queries_for_5_or_60_changes(
    admin_client, audience, other_audience, django_assert_max_num_queries
):
    def add_changes(first: int, last: int) -> None:
        for n in range(first, last):
            apply(audience if n % 2 else other_audience, join("p.fogg138", 1764321660 + n, CustomerId=str(n)))

    add_changes(0, 5)
    user = User.objects.get()
    pages = [changes_url(user), changes_url(user, audience=audience.pk), url("audiences_user_change", user.pk)]
    few = [len(page_queries(admin_client, page)) for page in pages]

    add_changes(5, 60)
    before = MembershipChange.objects.order_by("-pk").values_list("pk", flat=True)[10]
    for page, bound in zip(pages + [changes_url(user, before=before)], few + few[:1], strict=True):
        with django_assert_max_num_queries(bound):
            queries = page_queries(admin_client, page)
        assert big_table_counts(queries) == []
        for query in queries.captured_queries:
            if "audiences_membershipchange" in query["sql"]:
                assert "LIMIT" in query["sql"], query["sql"]


def test_the_user_list_search_counts_only_the_users_it_found(admin_client, audience):
    add_members(audience, "p.fogg138", "passepartout")

    with CaptureQueriesContext(db_connection) as queries:
        page = admin_client.get(url("audiences_user_changelist") + "?q=p.fogg").text

    assert "p.fogg138" in result_rows(page) and "passepartout" not in result_rows(page)
    assert "1 audience user" in page
    for sql in big_table_counts(queries):
        assert '"audiences_user"."id" IN (' in sql, sql
