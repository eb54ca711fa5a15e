"""Request and response models; the OpenAPI document is generated from these."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PredictQuery(BaseModel):
    """Query string of POST /v1/predict."""

    top_k: int = Field(5, ge=1, le=1000, description="Classes listed in top_k, best first.")


class PredictJSONRequest(BaseModel):
    """application/json body of POST /v1/predict: a batch of base64-encoded image files."""

    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(
        ...,
        min_length=1,
        description="Base64 (standard alphabet, or a data: URL) encoded image files, in order.",
    )


class ClassScore(BaseModel):
    """One class and its probability."""

    label: str
    index: int
    score: float


class Prediction(BaseModel):
    """The answer for one image: best class, top_k classes and every class's probability."""

    label: str
    index: int
    score: float
    top_k: list[ClassScore]
    scores: dict[str, float] = Field(description="Every class, probabilities summing to 1.")
    preprocessing: Literal["dataset", "photo"] = Field(
        description="Which form the image came in: 'photo' when the model's photo conversion "
        "ran on it (see /v1/model), 'dataset' when it was already in the dataset's form."
    )


class ModelRef(BaseModel):
    """Which model answered."""

    name: str
    version: str = Field(description="Content hash of the checkpoint file.")


class Timing(BaseModel):
    """Per-request timings in milliseconds."""

    decode: float = Field(description="Decoding and preprocessing all images.")
    queue: float = Field(description="Waiting for a forward pass (dynamic batching).")
    inference: float = Field(description="Forward passes that computed this request's images.")
    total: float = Field(description="From receiving the request to the response body.")


class PredictResponse(BaseModel):
    """200 answer of POST /v1/predict; predictions[i] answers the i-th image sent."""

    model: ModelRef
    predictions: list[Prediction]
    timing_ms: Timing


class InputShape(BaseModel):
    """The tensor one image becomes."""

    channels: int
    height: int
    width: int


class Normalization(BaseModel):
    """How pixels become the network's input: mode, resize, 0-1, then (x - mean) / std."""

    mode: str
    resample: str
    background: int
    mean: list[float]
    std: list[float]


class PhotoConversionInfo(BaseModel):
    """The dataset's conversion of product photos, stored in the checkpoint."""

    name: str
    tolerance: float = Field(description="Trim threshold, a share of the maximum intensity.")
    extent: float = Field(description="The object's long edge as a share of the input's.")
    work_scale: int = Field(description="Photos are first reduced to this many input sides.")
    applies_to: str
    steps: list[str]


class PreprocessingInfo(BaseModel):
    """What an uploaded image goes through before the network, in order."""

    steps: list[str]
    photo_conversion: PhotoConversionInfo | None


class Layer(BaseModel):
    """One layer of the architecture summary."""

    name: str
    kind: str
    output_shape: list[int]
    parameters: int


class Architecture(BaseModel):
    """The network's config, layers and parameter count."""

    config: dict[str, object]
    layers: list[Layer]
    parameters: int


class BatchingInfo(BaseModel):
    """How requests to this version share forward passes, and the timings that chose it."""

    max_batch_size: int = Field(description="Images per forward pass at most (1: no batching).")
    ms_per_image: dict[str, float] = Field(
        description="Pass size -> milliseconds per image in one forward pass of that size, "
        "measured at load."
    )
    reason: str = Field(description="The choice and why, in words.")


class ModelInfo(BaseModel):
    """GET /v1/model."""

    name: str
    version: str
    classes: list[str]
    input: InputShape
    normalization: Normalization
    architecture: Architecture
    preprocessing: PreprocessingInfo
    training: dict[str, object] = Field(description="Dataset, epochs, accuracy, date, ...")
    precision: str
    batching: BatchingInfo | None = Field(
        None, description="Chosen from the model's own forward passes once it is warmed up."
    )


class Health(BaseModel):
    """GET /healthz and GET /readyz."""

    status: str
    model_version: str | None = None
    detail: str | None = None


class ProblemDetail(BaseModel):
    """application/problem+json error body (RFC 9457)."""

    type: str
    title: str
    status: int
    detail: str
    request_id: str


class ServedModelEntry(BaseModel):
    """One model of GET /v1/models."""

    name: str = Field(description="The name it is served under (its checkpoint's file stem).")
    version: str | None = Field(description="Content hash of the version serving now.")
    ready: bool
    default: bool = Field(description="True for the model /v1/predict and /v1/model serve.")
    detail: str | None = Field(None, description="Why it does not serve, when it does not.")


class ModelList(BaseModel):
    """GET /v1/models: every model this server found, by name."""

    models: list[ServedModelEntry]


# Open Inference Protocol v2 (KServe required API, Triton's binary and classification extensions)


class V2Error(BaseModel):
    """Every error of the v2 routes."""

    error: str


class V2Live(BaseModel):
    """GET /v2/health/live."""

    live: bool


class V2Ready(BaseModel):
    """GET /v2/health/ready."""

    ready: bool


class V2ModelReady(BaseModel):
    """GET /v2/models/{name}[/versions/{version}]/ready."""

    name: str
    ready: bool


class V2ServerMetadata(BaseModel):
    """GET /v2."""

    name: str
    version: str
    extensions: list[str]


class V2TensorMetadata(BaseModel):
    """One input or output of a model; -1 marks a dimension of any size."""

    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    """GET /v2/models/{name}[/versions/{version}]."""

    name: str
    versions: list[str] = Field(description="Content hash of the checkpoint serving now.")
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2InferInput(BaseModel):
    """One input tensor; `data` is absent when the tensor travels as binary after the JSON."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, object] | None = None
    data: list[object] | None = None


class V2RequestedOutput(BaseModel):
    """An output the client asks for (`binary_data`, `classification` in parameters)."""

    name: str
    parameters: dict[str, object] | None = None


class V2InferRequest(BaseModel):
    """POST /v2/models/{name}[/versions/{version}]/infer (the JSON part of a binary body)."""

    id: str | None = None
    parameters: dict[str, object] | None = None
    inputs: list[V2InferInput]
    outputs: list[V2RequestedOutput] | None = None


class V2InferOutput(BaseModel):
    """One output tensor; `data` is absent when it travels as binary after the JSON."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, object] | None = None
    data: list[object] | None = None


class V2InferResponse(BaseModel):
    """200 answer of infer."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2InferOutput]


# TorchServe-compatible routes


class TorchServeError(BaseModel):
    """Every error of /ping and /predictions, as TorchServe writes them."""

    code: int
    type: str
    message: str


class ExplainQuery(PredictQuery):
    """Query string of POST /v1/explain: /v1/predict's, and the class to explain."""

    model_config = ConfigDict(extra="forbid")

    target: str | None = Field(
        None,
        min_length=1,
        description="Class to explain with Grad-CAM: a label or an index (default: the top one).",
    )


class MapPicture(BaseModel):
    """One map as a PNG data URL, scaled on its own: black is `min`, white is `max`."""

    image: str = Field(description="data:image/png;base64,...")
    min: float
    max: float


class KernelPicture(MapPicture):
    """One learned kernel: its picture and its weights, indexed [input channel][row][column]."""

    values: list[list[list[float]]]


class LayerMaps(BaseModel):
    """The output of one layer of the conv blocks: one picture per channel."""

    name: str = Field(description="The layer's name, as in GET /v1/model's layer summary.")
    kind: str = Field(description="Conv2d, BatchNorm2d, ReLU or MaxPool2d.")
    block: int = Field(description="Index of the conv block the layer belongs to.")
    shape: list[int] = Field(description="[channels, height, width].")
    maps: list[MapPicture]


class Kernels(BaseModel):
    """The first convolution's kernels, the filters that look at the pixels."""

    layer: str
    shape: list[int] = Field(description="[out channels, in channels, height, width].")
    maps: list[KernelPicture]


class InputPicture(BaseModel):
    """The model's input after resizing and mode conversion, before normalisation."""

    image: str
    channels: int
    height: int
    width: int


class GradCamResult(BaseModel):
    """Grad-CAM: where the last rectified conv layer's evidence for the target class sits.

    A hint about what the model used, not proof of it.
    """

    target: ClassScore
    layer: str = Field(description="The layer whose maps and gradients it weighs.")
    empty: bool = Field(description="True when no positive evidence was found anywhere.")
    heatmap: str = Field(description="PNG data URL of the 0-1 map in colour, at the input size.")
    overlay: str = Field(description="PNG data URL of the heat colours over the input.")


class ExplainTiming(Timing):
    """Timings of one explain in milliseconds."""

    explain: float = Field(description="The layer walk and the Grad-CAM gradient.")
    encode: float = Field(description="Turning every map into a PNG.")


class ExplainResponse(BaseModel):
    """200 answer of POST /v1/explain: the prediction as /v1/predict gives it, and the maps."""

    model: ModelRef
    prediction: Prediction
    input: InputPicture
    layers: list[LayerMaps]
    kernels: Kernels
    gradcam: GradCamResult
    timing_ms: ExplainTiming
