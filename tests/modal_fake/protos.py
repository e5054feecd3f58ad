"""Names for the protobuf enum types the fake passes around (plain ints at runtime)."""

from __future__ import annotations

from typing import TypeAlias

from modal_proto import api_pb2

__all__ = ["DATA_FORMATS", "DataFormat", "InvocationType", "ResultStatus"]

DataFormat: TypeAlias = api_pb2.DataFormat.ValueType
InvocationType: TypeAlias = api_pb2.FunctionCallInvocationType.ValueType
ResultStatus: TypeAlias = api_pb2.GenericResult.GenericStatus.ValueType

# What a deployed 1.6.4 function advertises (modal/_functions.py): pickle and CBOR both ways.
DATA_FORMATS: list[DataFormat] = [api_pb2.DATA_FORMAT_PICKLE, api_pb2.DATA_FORMAT_CBOR]
