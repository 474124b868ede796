"""A tiny BaseHandler subclass for the TorchServe tests (model built in code, no weights file).

Each request body is JSON ``{"x": [4 floats], "stream": n}``; the answer is
``{"request_id": ..., "y": [2 floats], "batch_size": n}``. With ``"stream": n`` (n > 0) in any
request of the batch, the handler first sends ``n`` intermediate responses per request through
``send_intermediate_predict_response`` (TorchServe's streaming API).
"""

import json
import time

import torch
from ts.handler_utils.utils import send_intermediate_predict_response
from ts.torch_handler.base_handler import BaseHandler

STAGE_SLEEP_S = 0.002  # makes every stage measurable and gives batches time to form


class TinyHandler(BaseHandler):
    def initialize(self, context):
        self.context = context
        self.manifest = context.manifest
        torch.manual_seed(0)
        torch.set_num_threads(1)
        self.model = torch.nn.Linear(4, 2)
        self.model.eval()
        self.initialized = True

    def preprocess(self, data):
        time.sleep(STAGE_SLEEP_S)
        bodies = []
        for row in data:
            body = row.get("data") or row.get("body") if isinstance(row, dict) else row
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            bodies.append(body)
        self._streams = max(int(b.get("stream", 0)) for b in bodies)
        if any(b.get("fail") for b in bodies):
            raise ValueError("asked to fail")
        return torch.tensor([b["x"] for b in bodies], dtype=torch.float32)

    def inference(self, data, *args, **kwargs):
        time.sleep(STAGE_SLEEP_S)
        with torch.no_grad():
            return self.model(data)

    def postprocess(self, data):
        time.sleep(STAGE_SLEEP_S)
        n = len(data)
        for i in range(self._streams):
            time.sleep(STAGE_SLEEP_S)
            send_intermediate_predict_response(
                [json.dumps({"chunk": i}) + "\n"] * n,
                self.context.request_ids,
                "Intermediate Prediction success",
                200,
                self.context,
            )
        return [
            json.dumps(
                {
                    "request_id": self.context.get_request_id(i),
                    "y": [round(v, 6) for v in data[i].tolist()],
                    "batch_size": n,
                }
            )
            for i in range(n)
        ]
