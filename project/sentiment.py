"""The example model: a tiny keyword sentiment classifier, as in ModalKit's guide.

It stands in for a real model (weights loaded in ``__init__``, a batched
``predict``) and needs nothing beyond pydantic, so it runs anywhere, Modal included.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from modalkit_django.inference.pipeline import InferenceOutputModel, InferencePipeline


class SentimentRequest(BaseModel):
    text: str = Field(min_length=1, max_length=10_000)


class SentimentResponse(InferenceOutputModel):
    sentiment: str
    confidence: float


class SentimentPipeline(InferencePipeline):
    input_model = SentimentRequest
    output_model = SentimentResponse

    def __init__(self, model_name: str, all_model_data_folder: str, common_settings: dict[str, Any], **kwargs: Any):
        super().__init__(model_name, all_model_data_folder, common_settings, **kwargs)
        # A real pipeline would load its weights here, from all_model_data_folder.
        self.positive = set(kwargs.get("positive_words", ["good", "great", "love"]))
        self.negative = set(kwargs.get("negative_words", ["bad", "awful", "hate"]))
        # Lets the demo and the tests make a model fail on purpose.
        self.fail_word = common_settings.get("fail_word")

    def preprocess(self, input_list: list[BaseModel]) -> dict[str, Any]:
        texts = [str(getattr(item, "text", "")) for item in input_list]
        return {"words": [set(text.lower().split()) for text in texts], "texts": texts}

    def predict(self, input_list: list[BaseModel], preprocessed_data: dict[str, Any]) -> dict[str, Any]:
        predictions = []
        for text, words in zip(preprocessed_data["texts"], preprocessed_data["words"], strict=True):
            if self.fail_word and self.fail_word in text:
                raise ValueError(f"the model cannot read {self.fail_word!r}")
            score = len(words & self.positive) - len(words & self.negative)
            if score > 0:
                predictions.append(("positive", 0.95))
            elif score < 0:
                predictions.append(("negative", 0.9))
            else:
                predictions.append(("neutral", 0.7))
        return {"predictions": predictions}

    def postprocess(self, input_list: list[BaseModel], raw_output: dict[str, Any]) -> list[InferenceOutputModel]:
        return [
            SentimentResponse(sentiment=sentiment, confidence=confidence)
            for sentiment, confidence in raw_output["predictions"]
        ]
