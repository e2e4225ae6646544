"""The PostgreSQL row image of the capture trigger and the snapshot: `to_jsonb(row)`, with the
columns captured as their text (catalog.TableShape.as_text) as `col::text`.

Only those columns are named; the trigger names them only once the row shows them all, so a
column renamed or dropped without re-running `init` never fails the application's writes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # schema.py builds the triggers from these and defines CaptureSql
    from subscription_export.source.schema import CaptureSql


def pg_row_image(
    as_text: tuple[str, ...], row: str, sql: CaptureSql, *, alias: bool = False
) -> str:
    """A row as the PostgreSQL image: `to_jsonb`, with the `as_text` columns as their text.

    `alias`: `row` is a table alias in a query (the snapshot's), not the trigger's NEW/OLD.
    There the whole row must be written `s.*`: a bare `s` means the table's column `s` when it
    has one (PostgreSQL prefers the column), and the image would be that column's value."""
    whole = f"{row}.*" if alias else row
    if not as_text:
        return f"to_jsonb({whole})"
    return f"(to_jsonb({whole}) || {pg_text_pairs(as_text, row, sql)})"


def pg_text_pairs(as_text: tuple[str, ...], row: str, sql: CaptureSql) -> str:
    """`jsonb_build_object('j', row."j"::text, …)`: the as-text columns over the image."""
    pairs = ", ".join(f"{sql.literal(n)}, {row}.{sql.ident(n)}::text" for n in as_text)
    return f"jsonb_build_object({pairs})"


def pg_trigger_images(
    as_text: tuple[str, ...], sql: CaptureSql, alias: str, truncated: Callable[[str, str], str]
) -> str:
    """The trigger's DECLARE and first statements (`truncated(image, relid)`: TRUNCATE's
    INSERT … SELECT over `alias`, for the relation `relid`): TRUNCATE's branch, and the row images
    `old_image`/`new_image`.

    The as-text columns (`col::text`, catalog.TableShape) are the only columns the image names.
    A name that no longer exists (a column renamed or dropped without re-running `init`) would
    make PL/pgSQL fail the application's write (`record "new" has no field "j"`) when it plans
    the statement, so the statements naming them run only once the row shows them all (its
    `to_jsonb` keys; for TRUNCATE, the catalog), and are planned only then. Otherwise the image
    is built by dynamic SQL over the as-text columns still there: the same `col::text`, so the
    remaining columns' bytes do not change; a dropped column is absent (null on export), a
    renamed one comes under its new name (quarantined until `init`, as any unknown column).
    The fallback runs only between such DDL and `init`, so its cost is not on the usual path."""
    if not as_text:
        image = pg_row_image((), alias, sql)
        return (
            f"BEGIN IF TG_OP = 'TRUNCATE' THEN {truncated(image, 'TG_RELID')}; RETURN NULL; END IF;"
        )
    names = "ARRAY[" + ", ".join(sql.literal(n) for n in as_text) + "]::text[]"
    # `'name', (row)."name"::text` per column still there, joined: `jsonb_build_object`'s pairs.
    # (No `format()`: its `%` would be taken for a placeholder by the driver running init.)
    pairs = (
        "COALESCE(string_agg(quote_literal(n) || ', ({row}).' || quote_ident(n) || '::text',"
        " ', '), '')"
    )
    present = "captured_present"

    def row_image(row: str) -> str:
        target = f"{row.lower()}_image"
        return f"""
            {target} := to_jsonb({row});
            IF {target} ?& captured_as_text THEN
                {target} := {target} || {pg_text_pairs(as_text, row, sql)};
            ELSE
                SELECT {pairs.format(row="$2")} INTO {present}
                    FROM unnest(captured_as_text) AS n WHERE {target} ? n;
                EXECUTE 'SELECT $1 || jsonb_build_object(' || {present} || ')'
                    INTO {target} USING {target}, {row};
            END IF;"""

    # TRUNCATE's statement as dynamic SQL, split where the pairs go (a marker in no name).
    marker = "@pairs@"
    while marker in truncated("", "$1"):
        marker += "@"
    dynamic = truncated(f"(to_jsonb({alias}.*) || jsonb_build_object({marker}))", "$1")
    before, after = (sql.literal(part) for part in dynamic.split(marker))
    return f"""
        DECLARE
            captured_as_text CONSTANT text[] := {names};
            {present} text;
            captured_all boolean;
            old_image jsonb;
            new_image jsonb;
        BEGIN
            IF TG_OP = 'TRUNCATE' THEN
                SELECT count(*) = cardinality(captured_as_text),
                       {pairs.replace("({row})", alias)}
                    INTO captured_all, {present}
                    FROM (SELECT a.attname::text AS n FROM pg_attribute AS a
                          WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped
                            AND a.attname = ANY(captured_as_text)) AS present_columns;
                IF captured_all THEN
                    {truncated(pg_row_image(as_text, alias, sql), "TG_RELID")};
                ELSE
                    EXECUTE {before} || {present} || {after}
                        USING TG_RELID;
                END IF;
                RETURN NULL;
            END IF;
            IF TG_OP <> 'INSERT' THEN {row_image("OLD")}
            END IF;
            IF TG_OP <> 'DELETE' THEN {row_image("NEW")}
            END IF;"""
