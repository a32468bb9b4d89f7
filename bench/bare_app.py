"""Baseline (a) of bench/throughput.py: a bare Flask handler that parses the JSON body and
replies ``{"success": true}``, served by the same gunicorn settings as the real service."""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/api/track")
def track():  # type: ignore[no-untyped-def]
    request.get_json()
    return jsonify(success=True)
