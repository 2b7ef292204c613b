"""The DuckDB side of analyzer_bench.sh, and the table: runs the built-in chain rules' SQL on
the archive's Parquet files in DuckDB (the same views, defined from `sluice-analyzer views`),
compares each rule's row count with DataFusion's and with the planted chains, and prints the
README table (ingest rate, per-rule times, ratio)."""

import argparse
import json
import re
import time
from pathlib import Path

import duckdb


def duck_sql(sql: str) -> str:
    """DataFusion → DuckDB spelling: `~*` is a partial case-insensitive match there too
    (`regexp_matches(x, p, 'i')`), `make_array` is `list_value`, the aggregate
    `first_value(x ORDER BY y)` is `arg_min(x, y)`."""
    sql = re.sub(r"([\w.]+)\s*~\*\s*('[^']*')", r"regexp_matches(\1, \2, 'i')", sql)
    sql = re.sub(r"first_value\(([\w.]+) ORDER BY ([\w.]+)\)", r"arg_min(\1, \2)", sql)
    return sql.replace("make_array(", "list_value(")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--rules", required=True)
    a = ap.parse_args()
    d = Path(a.dir)
    gen = json.loads((d / "generated.json").read_text())
    ingest = json.loads((d / "ingest.json").read_text())
    wall, user, sys_ = map(float, (d / "ingest.time").read_text().split()[-3:])
    df = {}
    for line in (d / "datafusion.timings").read_text().splitlines():
        if line.startswith("{"):
            t = json.loads(line)
            df[t["rule"]] = t
    con = duckdb.connect()
    files = str(d / "archive" / "events" / "**" / "*.parquet")
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{files}', hive_partitioning = true, hive_types_autocast = false)")
    for name, sql in json.loads((d / "views.json").read_text()).items():
        con.execute(f"CREATE VIEW {name} AS {duck_sql(sql)}")
    rows = []
    for f in sorted(Path(a.rules).glob("*.sql")):
        text = f.read_text()
        rule = re.search(r"^-- id:\s*(\S+)", text, re.M).group(1)
        t = time.perf_counter()
        n = con.sql(duck_sql(text)).to_arrow_table().num_rows
        duck_ms = (time.perf_counter() - t) * 1e3
        rows.append((rule, df[rule]["ms"], duck_ms, df[rule]["rows"], n, gen["planted"].get(rule)))
    print(f"\nevents: {gen['events']:,} ({gen['bytes'] / 2**30:.2f} GiB of spool, {gen['sessions']:,} sessions)")
    print(f"ingest: {ingest['written']:,} events in {wall:.1f} s wall = {ingest['written'] / wall / 1e6:.2f} M events/s; "
          f"CPU {user + sys_:.1f} s (user {user:.1f} + sys {sys_:.1f}) = {ingest['written'] / (user + sys_) / 1e6:.2f} M events per CPU-second; "
          f"{ingest['files']} files")
    print("\n| rule | DataFusion ms | DuckDB ms | DataFusion / DuckDB | alerts (DataFusion / DuckDB / planted) |")
    print("|---|---|---|---|---|")
    tot_df = tot_dk = 0.0
    ok = True
    for rule, a_ms, b_ms, a_n, b_n, planted in rows:
        tot_df += a_ms
        tot_dk += b_ms
        ok &= a_n == b_n and (planted is None or a_n == planted)
        print(f"| {rule} | {a_ms:.0f} | {b_ms:.0f} | {a_ms / b_ms:.2f}× | {a_n} / {b_n} / {planted} |")
    print(f"| **all rules** | **{tot_df:.0f}** | **{tot_dk:.0f}** | **{tot_df / tot_dk:.2f}×** | |")
    if not ok:
        raise SystemExit("alert counts differ between the engines or from the planted chains")


if __name__ == "__main__":
    main()
