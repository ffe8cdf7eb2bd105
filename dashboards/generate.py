#!/usr/bin/env python3
"""Writes the Grafana dashboards of relais (dashboards/*.json) from the panel lists below.

The JSON files are committed; edit this file and run it (python3 dashboards/generate.py)
rather than editing them by hand, so that every panel keeps its unit, its variables and
$__rate_interval in its rates.
"""
import json
import os

S = 'job=~"$job", instance=~"$instance"'
R = "$__rate_interval"


def rate(metric, labels="", by=None, fn="rate"):
    sel = S + (", " + labels if labels else "")
    inner = f"{fn}({metric}{{{sel}}}[{R}])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def quantile(q, metric, labels="", by=""):
    sel = S + (", " + labels if labels else "")
    group = "le" + (", " + by if by else "")
    return f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{sel}}}[{R}])))"


def gauge(metric, labels="", by=None):
    sel = S + (", " + labels if labels else "")
    return f"sum by ({by}) ({metric}{{{sel}}})" if by else f"sum({metric}{{{sel}}})"


def target(expr, legend):
    return {"expr": expr, "legendFormat": legend}


def ts(title, unit, targets, description=""):
    return {"type": "timeseries", "title": title, "unit": unit, "targets": targets,
            "description": description}


def stat(title, unit, expr, description=""):
    return {"type": "stat", "title": title, "unit": unit, "targets": [target(expr, title)],
            "description": description}


OVERVIEW = [
    stat("Nodes up", "none", f"sum(up{{{S}}})", "Nodes Prometheus scrapes successfully."),
    stat("Serving nodes", "none", gauge("relais_node_state", 'state="serving"'),
         "Nodes that take joins (not draining, not fenced)."),
    stat("Rooms", "none", gauge("relais_rooms", 'role="owner"'), "Rooms owned by the nodes."),
    stat("Participants", "none", gauge("relais_participants"), "Sessions on the nodes."),
    stat("Join success ratio", "percentunit",
         rate("relais_joins_total", 'result="success"') + " / "
         + rate("relais_joins_total", 'result!~"redirected|unauthorized|bad_request"'),
         "Joins that reached connected media, of those neither redirected nor refused "
         "for a bad token or request."),
    stat("Join latency p95", "s", quantile(0.95, "relais_join_duration_seconds"),
         "95th percentile from join request to connected media."),
    ts("Participants per node", "none",
       [target(gauge("relais_participants", by="instance"), "{{instance}}")]),
    ts("Rooms per node", "none",
       [target(gauge("relais_rooms", by="instance, role"), "{{instance}} {{role}}")]),
    ts("Joins by result", "ops", [target(rate("relais_joins_total", by="result"), "{{result}}")]),
    ts("Join latency", "s", [
        target(quantile(0.5, "relais_join_duration_seconds"), "p50"),
        target(quantile(0.95, "relais_join_duration_seconds"), "p95"),
        target(quantile(0.99, "relais_join_duration_seconds"), "p99"),
    ], "From the join request to DTLS connected."),
    ts("Tracks", "none",
       [target(gauge("relais_tracks", by="kind, direction"), "{{kind}} {{direction}}")],
       "in: published tracks; out: subscriptions."),
    ts("Nodes by state", "none",
       [target(gauge("relais_node_state", by="state"), "{{state}}")]),
]

MEDIA = [
    ts("Bitrate", "bps", [target(
        "8 * " + rate("relais_rtp_payload_bytes_total", 'path="client"', by="direction, kind"),
        "{{direction}} {{kind}}")], "RTP payload bitrate to and from clients."),
    ts("Packet rate", "pps", [target(
        rate("relais_rtp_packets_total", by="direction, kind, path"),
        "{{direction}} {{kind}} {{path}}")]),
    ts("Loss ratio", "percentunit", [target(
        rate("relais_rtp_packets_lost_total", by="direction") + " / "
        + rate("relais_rtp_packets_total", by="direction"), "{{direction}}")],
       "in: lost from publishers; out: lost towards subscribers, from their reports."),
    ts("Jitter p95", "s", [target(
        quantile(0.95, "relais_rtp_jitter_seconds", by="direction, kind"),
        "{{direction}} {{kind}}")]),
    ts("Round-trip time", "s", [
        target(quantile(0.5, "relais_rtt_seconds"), "p50"),
        target(quantile(0.95, "relais_rtt_seconds"), "p95"),
    ], "To subscribers, from their RTCP receiver reports."),
    ts("NACKs", "pps", [target(rate("relais_rtcp_nacks_total", by="direction"),
                               "{{direction}}")],
       "in: from subscribers; out: to publishers."),
    ts("Retransmissions", "pps",
       [target(rate("relais_rtp_retransmitted_packets_total"), "retransmitted")]),
    ts("Keyframe requests", "reqps", [target(
        rate("relais_keyframe_requests_total", by="type, direction"),
        "{{type}} {{direction}}")], "in: from subscribers; out: to publishers."),
    ts("Forwarding delay", "s", [
        target(quantile(0.5, "relais_forwarding_delay_seconds"), "p50"),
        target(quantile(0.99, "relais_forwarding_delay_seconds"), "p99"),
    ], "From a packet's arrival to its write towards a subscriber (sampled)."),
    ts("Down-track queue drops", "pps", [target(
        rate("relais_down_track_queue_drops_total", by="kind"), "{{kind}}")],
       "Packets dropped for subscribers that do not keep up."),
    ts("Participants limited by their downlink", "none", [target(
        gauge("relais_bandwidth_limited_participants", by="instance"), "{{instance}}")],
       "Receiving a lower layer than their tiles call for, or video paused, because "
       "their estimated downlink is too small."),
]

CLUSTER = [
    ts("Rooms owned per node", "none", [target(
        gauge("relais_rooms", 'role="owner"', by="instance"), "{{instance}}")],
       "Placement balance."),
    ts("Participants per region", "none", [target(
        f"sum by (region) (relais_participants{{{S}}}"
        f" * on (job, instance) group_left (region) relais_build_info{{{S}}})",
        "{{region}}")]),
    ts("Rooms by role", "none", [target(gauge("relais_rooms", by="role"), "{{role}}")]),
    ts("Ownership changes", "ops", [target(
        rate("relais_room_ownership_changes_total", by="reason"), "{{reason}}")]),
    ts("Fencing rejections", "ops", [target(
        rate("relais_fencing_rejections_total", by="kind"), "{{kind}}")]),
    ts("etcd latency p95", "s", [target(
        quantile(0.95, "relais_etcd_request_duration_seconds", by="operation"),
        "{{operation}}")]),
    ts("etcd requests", "ops", [target(
        rate("relais_etcd_request_duration_seconds_count", by="operation"), "{{operation}}")]),
    ts("Lease keep-alive failures", "none", [target(
        rate("relais_etcd_lease_keepalive_failures_total", by="instance", fn="increase"),
        "{{instance}}")]),
    ts("Cascade links", "none", [target(gauge("relais_cascade_links", by="state"),
                                        "{{state}}")]),
    ts("Cascade bitrate", "bps", [target(
        "8 * " + rate("relais_rtp_payload_bytes_total", 'path="cascade"', by="direction, kind"),
        "{{direction}} {{kind}}")]),
    ts("Cascade reconnects", "ops", [target(
        rate("relais_cascade_reconnects_total", by="instance"), "{{instance}}")]),
]

RESOURCES = [
    ts("CPU", "percentunit", [target(
        rate("process_cpu_seconds_total", by="instance"), "{{instance}}")],
       "Share of one core."),
    ts("Resident memory", "bytes", [target(
        gauge("process_resident_memory_bytes", by="instance"), "{{instance}}")]),
    ts("Open files", "none", [
        target(gauge("process_open_fds", by="instance"), "{{instance}} open"),
        target(gauge("process_max_fds", by="instance"), "{{instance}} limit"),
    ]),
    ts("Threads", "none", [target(gauge("process_threads", by="instance"), "{{instance}}")]),
    ts("Tasks", "none", [target(gauge("relais_tasks", by="task"), "{{task}}")],
       "Long-lived media tasks relais runs."),
    ts("CPU per forwarded packet", "s", [target(
        rate("process_cpu_seconds_total", by="instance") + " / "
        + rate("relais_rtp_packets_total", 'direction="out"', by="instance"),
        "{{instance}}")]),
]


def variables():
    def query_var(name, query, all_value):
        var = {
            "name": name, "label": name, "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": name}, "definition": query,
            "refresh": 2, "includeAll": True, "multi": True,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        }
        if all_value:
            var["allValue"] = all_value
        return var

    return {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource",
         "query": "prometheus", "current": {}, "hide": 0},
        query_var("job", "label_values(relais_build_info, job)", ".*"),
        query_var("region", 'label_values(relais_build_info{job=~"$job"}, region)', ".*"),
        # All instances means those of the selected regions, so no catch-all value here.
        query_var("instance",
                  'label_values(relais_build_info{job=~"$job", region=~"$region"}, instance)',
                  None),
    ]}


def panel_json(panel, ident, x, y):
    width, height = (4, 4) if panel["type"] == "stat" else (12, 8)
    targets = [dict(t, refId=chr(65 + i), datasource={"type": "prometheus",
                                                       "uid": "${datasource}"})
               for i, t in enumerate(panel["targets"])]
    body = {
        "id": ident, "type": panel["type"], "title": panel["title"],
        "description": panel["description"],
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": height, "w": width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel["unit"]}, "overrides": []},
        "targets": targets,
    }
    if panel["type"] == "timeseries":
        body["options"] = {"legend": {"displayMode": "list", "placement": "bottom"},
                           "tooltip": {"mode": "multi"}}
    return body, width, height


def dashboard(uid, title, panels):
    out, x, y, row_height = [], 0, 0, 0
    for i, panel in enumerate(panels, start=1):
        body, width, height = panel_json(panel, i, x, y)
        if x + width > 24:
            x, y = 0, y + row_height
            body["gridPos"].update(x=x, y=y)
            row_height = 0
        out.append(body)
        x += width
        row_height = max(row_height, height)
    return {
        "uid": uid, "title": title, "tags": ["relais"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": variables(), "panels": out,
        "annotations": {"list": []},
    }


DASHBOARDS = [
    ("relais-overview", "relais / Overview", OVERVIEW, "overview.json"),
    ("relais-media", "relais / Media quality", MEDIA, "media.json"),
    ("relais-cluster", "relais / Cluster", CLUSTER, "cluster.json"),
    ("relais-resources", "relais / Resources", RESOURCES, "resources.json"),
]

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    for uid, title, panels, name in DASHBOARDS:
        with open(os.path.join(here, name), "w") as f:
            json.dump(dashboard(uid, title, panels), f, indent=2)
            f.write("\n")
