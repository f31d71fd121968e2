"""The OpenAPI description of the HTTP API, served at /api/openapi.json."""

from __future__ import annotations

from typing import Any

_REQUEST_ID = {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}}
_ERROR = {
    "description": 'Error (JSON: {"error": {"code", "message"}})',
    "headers": _REQUEST_ID,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
# Any route: 404 for a path that is none, 405 (with Allow) for a method it does not take.
_OTHER = {
    **_ERROR,
    "description": "Any other error: 404 not_found, 405 method_not_allowed, ...",
    "headers": {
        **_REQUEST_ID,
        "Allow": {"schema": {"type": "string"}, "description": "with a 405: the methods the path takes"},
    },
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
_TOP_K = {"name": "top_k", "in": "query", "required": False}  # schema and words: spec() knows the defaults
_HEATMAP = {
    "name": "heatmap",
    "in": "query",
    "required": False,
    "schema": {"type": "boolean", "default": True},
    "description": "include the class activation map of the primary class",
}


def _upload(field: str, many: int = 0) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "string", "format": "binary"}
    prop = {"type": "array", "items": item, "minItems": 1, "maxItems": many} if many else item
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {field: prop}, "required": [field]},
            }
        },
    }


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {
        "description": description,
        "headers": _REQUEST_ID,
        "content": {"application/json": {"schema": schema}},
    }


def _status(value: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"status": {"type": "string", "enum": [value]}, **fields},
        "required": ["status", *fields],
    }


def _prediction(**extra: Any) -> dict[str, Any]:
    """One image's answer: alone (with ``model``) or as a batch entry (with ``filename``)."""
    properties: dict[str, Any] = {
        "predictions": {
            "type": "object",
            "additionalProperties": {"type": "number"},
            "description": "every class: its probability",
        },
        "top": {"type": "array", "items": {"$ref": "#/components/schemas/Label"}},
        "primary": {"$ref": "#/components/schemas/Label"},
        "heatmap": {
            "type": ["object", "null"],
            "description": "the primary class's activation map, scaled to 0..1, rows top to bottom; "
            "null when not asked for or when the model has none",
            "properties": {
                "label": {"type": "string"},
                "width": {"type": "integer"},
                "height": {"type": "integer"},
                "values": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                "extent": {
                    "type": "object",
                    "description": "where the equal cells lie, as fractions of the image the model saw "
                    "(the whole image, or its central crop: /api/info resize): the grid spans "
                    "left..left+width and top..top+height and may reach past the image's edges, since the "
                    "network centres its cells on its strides, not on an even division of the image",
                    "properties": {k: {"type": "number"} for k in ("left", "top", "width", "height")},
                    "required": ["left", "top", "width", "height"],
                },
            },
            "required": ["label", "width", "height", "values", "extent"],
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
        "image": {
            "type": "object",
            "properties": {"bytes": {"type": "integer", "description": "size of the uploaded file"}},
            "required": ["bytes"],
        },
        **extra,
    }
    return {
        "type": "object",
        "properties": properties,
        "required": ["predictions", "top", "primary", "heatmap", "image", *extra],
    }


def _format_words(formats: tuple[str, ...]) -> str:
    """("JPEG", "PNG", "WEBP") -> "JPEG, PNG or WebP", as the page names them."""
    names = [{"WEBP": "WebP"}.get(f, f) for f in formats]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def spec(
    version: str,
    *,
    default_top_k: int = 5,
    num_classes: int | None = None,
    max_files: int = 16,
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP"),
    page: bool = True,
) -> dict[str, Any]:
    # What either upload route can answer besides 200; a batch reports a bad file's format in its own entry.
    common = {str(code): _ERROR for code in (400, 408, 413, 422, 500)}
    common["503"] = {
        **_ERROR,
        "description": "Busy, or shutting down: try again (Retry-After: 1)",
        "headers": {**_REQUEST_ID, "Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
    }
    common["default"] = _OTHER
    top_k = {
        **_TOP_K,
        "schema": {"type": "integer", "minimum": 1, "default": default_top_k},
        "description": "how many classes to list in `top`"
        + (f"; more than the {num_classes} classes lists them all" if num_classes else ""),
    }
    described: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Skin-lesion classifier",
            "version": version,
            "description": "Classifies skin photos; not a medical device. info.version is the served model's "
            "version.",
        },
        "paths": {
            "/api/predict": {
                "post": {
                    "summary": f"Classify one image ({_format_words(formats)})",
                    "parameters": [top_k, _HEATMAP],
                    "requestBody": _upload("file"),
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Prediction"}, "Prediction"),
                        **common,
                        "415": _ERROR,
                    },
                }
            },
            "/api/predict/batch": {
                "post": {
                    "summary": "Classify several images; a bad file gets its own error entry",
                    "parameters": [top_k, _HEATMAP],
                    "requestBody": _upload("files", many=max_files),
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Batch"}, "One result per file, in order"),
                        **common,
                    },
                }
            },
            "/api/info": {
                "get": {
                    "summary": "Model and runtime description",
                    "responses": {"200": _json({"type": "object"}), "default": _OTHER},
                }
            },
            "/api/report": {
                "get": {
                    "summary": "The stored evaluation report (scikit-learn classification_report shape)",
                    "responses": {"200": _json({"type": "object"}), "404": _ERROR, "default": _OTHER},
                }
            },
            "/api/openapi.json": {
                "get": {
                    "summary": "This description",
                    "responses": {"200": _json({"type": "object"}), "default": _OTHER},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Process is alive",
                    "responses": {"200": _json(_status("ok")), "default": _OTHER},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Model loaded and warmed up (the port opens only then)",
                    "responses": {
                        "200": _json(
                            _status(
                                "ready",
                                model={"type": "string", "description": "the served model's name"},
                                version={"type": "string"},
                            )
                        ),
                        # Not the error shape: a probe reads {"status"} either way (only in-process: the port
                        # opens after the warm-up).
                        "503": _json(_status("starting"), "Not ready yet"),
                        "default": _OTHER,
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "headers": _REQUEST_ID,
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "default": _OTHER,
                    },
                }
            },
        },
        "components": {
            "parameters": {
                "RequestId": {
                    "name": "X-Request-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "your own id for this request, given back in the answer's X-Request-ID "
                    "and kept in the logs if printable ASCII of at most 64 characters (else a new one)",
                }
            },
            "headers": {
                "RequestId": {
                    "schema": {"type": "string", "maxLength": 64},
                    "description": "the client's own X-Request-ID (printable ASCII, at most 64 characters), "
                    "else a new one; the logs carry it",
                }
            },
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
                "Model": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "demo": {"type": "boolean"},
                    },
                    "required": ["name", "version", "demo"],
                },
                "Prediction": _prediction(model={"$ref": "#/components/schemas/Model"}),
                "BatchPrediction": _prediction(filename={"type": "string"}),
                "BatchError": {
                    "type": "object",
                    "properties": {
                        "filename": {"type": "string"},
                        "error": {"$ref": "#/components/schemas/Error/properties/error"},
                    },
                    "required": ["filename", "error"],
                },
                "Batch": {
                    "type": "object",
                    "properties": {
                        "results": {
                            "type": "array",
                            "items": {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/BatchPrediction"},
                                    {"$ref": "#/components/schemas/BatchError"},
                                ]
                            },
                        },
                        "model": {"$ref": "#/components/schemas/Model"},
                    },
                    "required": ["results", "model"],
                },
            },
        },
    }
    if page:  # only where the page is served: without its folder, / is a 404
        described["paths"]["/"] = {
            "get": {
                "summary": "The web page (its app.js, style.css and favicon.svg are served beside it)",
                "responses": {
                    "200": {
                        "description": "The page",
                        "headers": _REQUEST_ID,
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "206": {"description": "The byte range asked for (Range)", "headers": _REQUEST_ID},
                    "304": {
                        "description": "Unchanged since its ETag (If-None-Match)",
                        "headers": _REQUEST_ID,
                    },
                    "default": {**_OTHER, "description": "Any other error: 416 range_not_satisfiable, ..."},
                },
            }
        }
    # Every route reads a client's own X-Request-ID (the CORS setup allows it): each one takes it.
    for operation in (op for item in described["paths"].values() for op in item.values()):
        operation["parameters"] = [
            *operation.get("parameters", []),
            {"$ref": "#/components/parameters/RequestId"},
        ]
    return described
