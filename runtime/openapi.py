"""The OpenAPI description of the HTTP API, served at /api/openapi.json."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "description": 'Error (JSON: {"error": {"code", "message"}})',
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_LABEL = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "description": "class (dataset folder) name"},
        "display_name": {"type": "string"},
        "probability": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "display_name", "probability"],
}
_TOP_K = {
    "name": "top_k",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1},
    "description": "how many classes to list in `top` (default: the server's SKIN_TOP_K, 5 unless set)",
}
_HEATMAP = {
    "name": "heatmap",
    "in": "query",
    "required": False,
    "schema": {"type": "boolean", "default": True},
    "description": "include the class activation map of the primary class",
}


def _upload(field: str, many: bool) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "string", "format": "binary"}
    prop = {"type": "array", "items": item} if many else item
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {field: prop}, "required": [field]},
            }
        },
    }


def spec(version: str) -> dict[str, Any]:
    # What either upload route can answer besides 200; a batch reports a bad file's format in its own entry.
    common = {str(code): _ERROR for code in (400, 408, 413, 422, 500)}
    common["503"] = {**_ERROR, "description": "Not ready, or busy (Retry-After: 1)"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Skin-lesion classifier",
            "version": version,
            "description": "Classifies skin photos; not a medical device.",
        },
        "paths": {
            "/api/predict": {
                "post": {
                    "summary": "Classify one image (JPEG, PNG or WebP)",
                    "parameters": [_TOP_K, _HEATMAP],
                    "requestBody": _upload("file", many=False),
                    "responses": {
                        "200": {
                            "description": "Prediction",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Prediction"}}
                            },
                        },
                        **common,
                        "415": _ERROR,
                    },
                }
            },
            "/api/predict/batch": {
                "post": {
                    "summary": "Classify several images; a bad file gets its own error entry",
                    "parameters": [_TOP_K, _HEATMAP],
                    "requestBody": _upload("files", many=True),
                    "responses": {
                        "200": {
                            "description": "One result per file, in order",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Batch"}}
                            },
                        },
                        **common,
                    },
                }
            },
            "/api/info": {
                "get": {"summary": "Model and runtime description", "responses": {"200": _json_ok()}}
            },
            "/api/report": {
                "get": {
                    "summary": "The stored evaluation report (scikit-learn classification_report shape)",
                    "responses": {"200": _json_ok(), "404": _ERROR},
                }
            },
            "/healthz": {"get": {"summary": "Process is alive", "responses": {"200": _json_ok()}}},
            "/readyz": {
                "get": {
                    "summary": "Model loaded and warmed up",
                    "responses": {"200": _json_ok(), "503": {"description": "Not ready"}},
                }
            },
            "/metrics": {
                "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                            "required": ["code", "message"],
                        }
                    },
                    "required": ["error"],
                },
                "Label": _LABEL,
                "Prediction": {
                    "type": "object",
                    "properties": {
                        "predictions": {"type": "object", "additionalProperties": {"type": "number"}},
                        "top": {"type": "array", "items": {"$ref": "#/components/schemas/Label"}},
                        "primary": {"$ref": "#/components/schemas/Label"},
                        "heatmap": {
                            "type": ["object", "null"],
                            "properties": {
                                "label": {"type": "string"},
                                "width": {"type": "integer"},
                                "height": {"type": "integer"},
                                "values": {
                                    "type": "array",
                                    "items": {"type": "array", "items": {"type": "number"}},
                                },
                            },
                        },
                        "confidence": {
                            "type": "string",
                            "enum": ["ok", "low"],
                            "description": "low: the top-1 calibrated probability is under the bundle's "
                            "min_probability, set at export for a target precision. Absent when the bundle "
                            "has no confidence threshold (see /api/info uncertainty)",
                        },
                        "in_distribution": {
                            "type": "boolean",
                            "description": "false: the image does not look like the training images (its "
                            "ood_score is past the bundle's threshold). Absent when the bundle has no "
                            "out-of-distribution threshold",
                        },
                        "ood_score": {
                            "type": ["number", "null"],
                            "description": "the out-of-distribution score in_distribution was decided on; "
                            "which score and which side is familiar: /api/info uncertainty.ood_score",
                        },
                        "image": {"type": "object"},
                        "model": {"type": "object"},
                    },
                    "required": ["predictions", "top", "primary", "model"],
                },
                "Batch": {
                    "type": "object",
                    "properties": {
                        "results": {"type": "array", "items": {"type": "object"}},
                        "model": {"type": "object"},
                    },
                    "required": ["results", "model"],
                },
            }
        },
    }


def _json_ok() -> dict[str, Any]:
    return {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
