"""Example TorchServe handler: a BaseHandler subclass with its own preprocess / inference /
postprocess, and optional streaming through ``send_intermediate_predict_response``.

The model is a tiny ``torch.nn.Linear`` built in code, so the archive needs no weights file.
Request body: ``{"x": [4 numbers]}``, or ``{"x": [...], "stream": 3}`` to get three
intermediate chunks before the answer.
"""

import json

import torch
from ts.handler_utils.utils import send_intermediate_predict_response
from ts.torch_handler.base_handler import BaseHandler


class TinyHandler(BaseHandler):
    def initialize(self, context):
        self.context = context
        self.manifest = context.manifest
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 2).eval()
        self.initialized = True

    def preprocess(self, data):
        bodies = []
        for row in data:
            body = row.get("data") or row.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            bodies.append(body)
        self._stream = max(int(b.get("stream", 0)) for b in bodies)
        return torch.tensor([b["x"] for b in bodies], dtype=torch.float32)

    def inference(self, data, *args, **kwargs):
        with torch.no_grad():
            return self.model(data)

    def postprocess(self, data):
        for i in range(self._stream):  # streamed chunks: each is a torchserve.intermediate event
            send_intermediate_predict_response(
                [json.dumps({"chunk": i}) + "\n"] * len(data),
                self.context.request_ids,
                "Intermediate Prediction success",
                200,
                self.context,
            )
        return [json.dumps({"y": row.tolist()}) for row in data]
