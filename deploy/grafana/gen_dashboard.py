#!/usr/bin/env python3
"""Generates rampart-dashboard.json (run: python3 deploy/grafana/gen_dashboard.py).

Edit the panels here rather than the JSON, so queries stay consistent (job, instance and
route filters, $__rate_interval). The output is plain Grafana dashboard JSON (schema 39).
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job="rampart", instance=~"$instance"'
RSEL = SEL + ', route=~"$route"'
RI = "$__rate_interval"
S5XX = 'status=~"5.."'
HIT = 'result="hit"'
NOT_BYPASS = 'result!="bypass"'

panels = []
_next_id = [1]
_y = [0]
_x = [0]
_row_h = [0]


def _pid():
    i = _next_id[0]
    _next_id[0] += 1
    return i


def row(title):
    _newline()
    panels.append({"type": "row", "title": title, "id": _pid(), "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": _y[0]}, "panels": []})
    _y[0] += 1


def _newline():
    if _x[0]:
        _y[0] += _row_h[0]
        _x[0] = 0
        _row_h[0] = 0


def _place(w, h):
    if _x[0] + w > 24:
        _newline()
    pos = {"h": h, "w": w, "x": _x[0], "y": _y[0]}
    _x[0] += w
    _row_h[0] = max(_row_h[0], h)
    return pos


def target(expr, legend="", ref="A", instant=False, fmt="time_series"):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref,
         "range": not instant, "instant": instant, "format": fmt}
    return t


def timeseries(title, targets, unit="short", w=12, h=8, description="", stack=False,
               max_=None):
    defaults = {"unit": unit, "custom": {"drawStyle": "line", "lineWidth": 1,
                                         "fillOpacity": 10 if stack else 0,
                                         "showPoints": "never", "spanNulls": False,
                                         "stacking": {"mode": "normal" if stack else "none",
                                                      "group": "A"}}}
    if max_ is not None:
        defaults["max"] = max_
        defaults["min"] = 0
    panels.append({"type": "timeseries", "title": title, "id": _pid(), "datasource": DS,
                   "description": description, "gridPos": _place(w, h), "targets": targets,
                   "fieldConfig": {"defaults": defaults, "overrides": []},
                   "options": {"legend": {"displayMode": "table", "placement": "bottom",
                                          "calcs": ["mean", "max", "lastNotNull"]},
                               "tooltip": {"mode": "multi", "sort": "desc"}}})


def stat(title, expr, unit="short", w=4, h=4, description="", mappings=None,
         thresholds=None, legend=""):
    panels.append({"type": "stat", "title": title, "id": _pid(), "datasource": DS,
                   "description": description, "gridPos": _place(w, h),
                   "targets": [target(expr, legend)],
                   "fieldConfig": {"defaults": {
                       "unit": unit, "mappings": mappings or [],
                       "thresholds": thresholds or {"mode": "absolute", "steps": [
                           {"color": "green", "value": None}]}}, "overrides": []},
                   "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                                 "values": False},
                               "colorMode": "background", "graphMode": "area",
                               "textMode": "auto", "justifyMode": "auto",
                               "orientation": "auto"}})


def table(title, expr, w=12, h=6, description=""):
    panels.append({"type": "table", "title": title, "id": _pid(), "datasource": DS,
                   "description": description, "gridPos": _place(w, h),
                   "targets": [target(expr, "", instant=True, fmt="table")],
                   "fieldConfig": {"defaults": {}, "overrides": []},
                   "transformations": [{"id": "organize", "options": {
                       "excludeByName": {"Time": True, "Value": True, "__name__": True}}}],
                   "options": {"showHeader": True}})


def rate(metric, sel=SEL, extra=""):
    inner = sel + (", " + extra if extra else "")
    return f"rate({metric}{{{inner}}}[{RI}])"


UPDOWN = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"},
                                        "1": {"text": "UP", "color": "green"}}}]
RATIO_THRESH = {"mode": "absolute", "steps": [{"color": "green", "value": None},
                                              {"color": "orange", "value": 0.01},
                                              {"color": "red", "value": 0.05}]}

# ---------------------------------------------------------------- overview
row("Overview")
stat("Requests/s", f"sum({rate('http_requests_total', RSEL)})", unit="reqps")
stat("5xx ratio",
     f"sum({rate('http_requests_total', RSEL, S5XX)}) / "
     f"sum({rate('http_requests_total', RSEL)})",
     unit="percentunit", thresholds=RATIO_THRESH,
     description="Share of responses with a 5xx status (Rampart's own 502/504 included).")
stat("In flight", f"sum(rampart_requests_in_flight{{{SEL}}})",
     description="Requests being processed right now, all selected replicas.")
stat("Replicas up", f"sum(up{{{SEL}}})",
     description="Rampart targets Prometheus scrapes successfully.")
stat("Redis (store) up", f"min(rampart_store_up{{{SEL}}})", mappings=UPDOWN,
     thresholds={"mode": "absolute", "steps": [{"color": "red", "value": None},
                                               {"color": "green", "value": 1}]},
     description="rampart_store_up: min over replicas. No value means no shared store is "
                 "configured (store.redis_url unset).")
stat("Config loaded", f"min(rampart_config_load_success{{{SEL}}})",
     mappings=[{"type": "value", "options": {"0": {"text": "FAILED", "color": "red"},
                                             "1": {"text": "OK", "color": "green"}}}],
     thresholds={"mode": "absolute", "steps": [{"color": "red", "value": None},
                                               {"color": "green", "value": 1}]})

# ---------------------------------------------------------------- traffic
row("Traffic by route")
timeseries("Request rate by route and status",
           [target(f"sum by (route, status) ({rate('http_requests_total', RSEL)})",
                   "{{route}} {{status}}")], unit="reqps", stack=True,
           description="http_requests_total{method,route,status}; route \"(unmatched)\" "
                       "counts requests no route matched, status 499 a client that left before the response header (as nginx).")
timeseries("5xx ratio by route",
           [target(f"sum by (route) ({rate('http_requests_total', RSEL, S5XX)})"
                   f" / sum by (route) ({rate('http_requests_total', RSEL)})", "{{route}}")],
           unit="percentunit", max_=1,
           description="Alert RampartHigh5xxRatio fires above 5% for 5m.")
timeseries("Latency p50 / p95 / p99 by route",
           [target(f"histogram_quantile({q}, sum by (route, le) "
                   f"({rate('http_request_duration_seconds_bucket', RSEL)}))",
                   f"p{int(q * 100)} {{{{route}}}}", ref)
            for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))],
           unit="s", description="Request to end of response, measured by Rampart "
                                 "(http_request_duration_seconds). Alert at p99 > 1s.")
timeseries("Requests in flight by instance",
           [target(f"sum by (instance) (rampart_requests_in_flight{{{SEL}}})",
                   "{{instance}}")])

# ---------------------------------------------------------------- upstreams
row("Upstreams")
timeseries("Upstream response time p50 / p99 by group",
           [target(f"histogram_quantile({q}, sum by (upstream, le) "
                   f"({rate('rampart_upstream_request_duration_seconds_bucket')}))",
                   f"p{int(q * 100)} {{{{upstream}}}}", ref)
            for q, ref in ((0.5, "A"), (0.99, "B"))], unit="s")
timeseries("Upstream errors by group and kind",
           [target(f"sum by (upstream, kind) ({rate('rampart_upstream_errors_total')})",
                   "{{upstream}} {{kind}}")], unit="short",
           description="Errors per second. connect = unreachable, timeout = no answer in "
                       "read_timeout, 5xx = the upstream answered with an error.")
timeseries("Healthy addresses by group",
           [target(f"min by (upstream, addr) (rampart_upstream_healthy{{{SEL}}})",
                   "{{upstream}} {{addr}}")], unit="short", max_=1, w=24,
           description="rampart_upstream_healthy: 1 while an address gets requests, 0 while its "
                       "health check fails or failed requests (max_fails) keep it out. "
                       "Minimum over the replicas.")
timeseries("Upstream retries by group and reason",
           [target(f"sum by (upstream, reason) ({rate('rampart_upstream_retries_total')})",
                   "{{upstream}} {{reason}}")], unit="short",
           description="Attempts sent again per second. connect = another address after a failed "
                       "connect; closed = a fresh connection to the same address after the pooled "
                       "one turned out closed by the upstream (its keep-alive timeout).")

# ---------------------------------------------------------------- cache & limiter
row("Cache and rate limiting")
timeseries("Cache hit ratio by route",
           [target(f"sum by (route) ({rate('rampart_cache_lookups_total', RSEL, HIT)})"
                   f" / sum by (route) ({rate('rampart_cache_lookups_total', RSEL, NOT_BYPASS)})",
                   "{{route}}")], unit="percentunit", max_=1,
           description="hit / (hit + miss + stale + expired + revalidated). Bypassed lookups "
                       "(not cacheable: method, Authorization, Cache-Control) are left out.")
timeseries("Cache lookups by route and result",
           [target(f"sum by (route, result) ({rate('rampart_cache_lookups_total', RSEL)})",
                   "{{route}} {{result}}")], unit="ops", stack=True)
timeseries("Rate-limit decisions by policy and outcome",
           [target(f"sum by (policy, outcome) ({rate('rampart_ratelimit_decisions_total')})",
                   "{{policy}} {{outcome}}")], unit="ops", stack=True,
           description="allowed | limited (429 sent) | report_only_limited (would have been "
                       "limited) | fallback (decided by the in-process fallback).")
timeseries("Bytes written to the cache by route",
           [target(f"sum by (route) ({rate('rampart_cache_stored_bytes_total', RSEL)})",
                   "{{route}}")], unit="Bps")

# ---------------------------------------------------------------- store
row("Shared store (Redis)")
timeseries("Store up by instance",
           [target(f"rampart_store_up{{{SEL}}}", "{{instance}} {{backend}}")], max_=1,
           w=8, description="1 while Redis answers, 0 during an outage (alert RampartRedisDown).")
timeseries("Store call latency p99 by op",
           [target(f"histogram_quantile(0.99, sum by (backend, op, le) "
                   f"({rate('rampart_store_command_duration_seconds_bucket')}))",
                   "{{backend}} {{op}}")], unit="s", w=8)
timeseries("Store errors and fallbacks",
           [target(f"sum by (backend, op) ({rate('rampart_store_errors_total')})",
                   "errors/s {{backend}} {{op}}", "A"),
            target(f"max by (feature) (rampart_store_fallback_active{{{SEL}}})",
                   "fallback active: {{feature}}", "B")], w=8)

# ---------------------------------------------------------------- compression
row("Compression")
timeseries("Compression ratio (out / in) by encoding",
           [target(f"sum by (encoding) ({rate('rampart_compression_bytes_out_total')})"
                   f" / sum by (encoding) ({rate('rampart_compression_bytes_in_total')})",
                   "{{encoding}}")], unit="percentunit", max_=1,
           description="Lower is better: 0.3 means responses shrank to 30%.")
timeseries("Compression bytes in / out by encoding",
           [target(f"sum by (encoding) ({rate('rampart_compression_bytes_in_total')})",
                   "in {{encoding}}", "A"),
            target(f"sum by (encoding) ({rate('rampart_compression_bytes_out_total')})",
                   "out {{encoding}}", "B")], unit="Bps")

# ---------------------------------------------------------------- build
row("Build and configuration")
table("Build info by instance", f"max by (instance, version) (rampart_build_info{{{SEL}}})",
      description="rampart_build_info{version}: mixed versions show a rollout in progress.")
table("Configuration loaded at",
      f"max by (instance) (rampart_config_load_timestamp_seconds{{{SEL}}}) * 1000")
panels[-1]["fieldConfig"]["defaults"]["unit"] = "dateTimeAsIso"
panels[-1]["transformations"][0]["options"]["excludeByName"]["Value"] = False


def var_query(name, label, query, multi=True):
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
            "refresh": 2, "includeAll": True, "multi": multi, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1, "hide": 0, "options": []}


dashboard = {
    "uid": "rampart-overview",
    "title": "Rampart",
    "description": "Rampart reverse proxy: traffic, errors and latency by route, upstreams, "
                   "cache, rate limiting, Redis store, compression. Scrape job \"rampart\".",
    "tags": ["rampart", "proxy"],
    "timezone": "browser",
    "editable": True,
    "graphTooltip": 1,
    "refresh": "30s",
    "schemaVersion": 39,
    "version": 1,
    "time": {"from": "now-3h", "to": "now"},
    "timepicker": {},
    "annotations": {"list": []},
    "links": [],
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource",
         "query": "prometheus", "current": {}, "hide": 0, "includeAll": False,
         "multi": False, "options": [], "refresh": 1, "regex": ""},
        var_query("instance", "Instance", 'label_values(rampart_build_info{job="rampart"}, instance)'),
        var_query("route", "Route", 'label_values(http_requests_total{job="rampart"}, route)'),
    ]},
    "panels": panels,
}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rampart-dashboard.json")
with open(out, "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
print(f"wrote {out}: {len([p for p in panels if p['type'] != 'row'])} panels")
