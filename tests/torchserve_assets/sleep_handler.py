"""A handler whose inference takes 100 ms: the queueing reference (one worker, service time
S = 100 ms, so at most 1/S = 10 predictions/s whatever the load)."""

import json
import time

from ts.torch_handler.base_handler import BaseHandler

SERVICE_S = 0.100


class SleepHandler(BaseHandler):
    def initialize(self, context):
        self.context = context
        self.initialized = True

    def preprocess(self, data):
        return data

    def inference(self, data, *args, **kwargs):
        time.sleep(SERVICE_S)
        return data

    def postprocess(self, data):
        return [
            json.dumps({"request_id": self.context.get_request_id(i)}) for i in range(len(data))
        ]
