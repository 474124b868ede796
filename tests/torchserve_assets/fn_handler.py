"""A function handler (``fn_handler:handle``) for the TorchServe tests: echoes the request ids."""

import json


def handle(data, context):
    if data is None:  # TorchServe calls handle(None, context) once at load time
        return None
    return [
        json.dumps({"request_id": context.get_request_id(i), "n": len(data)})
        for i in range(len(data))
    ]
