"""Every GenerateRequest field checked before any work, with messages that name the field and
the limit: the generator's one place for request validation (its name rule is ``realm.names``)."""

import math
from collections.abc import Sequence

from realm.errors import InvalidArgument, shown
from realm.generator.decoding import SamplingParams
from realm.generator.extraction import FIELD_NAME, field_key
from realm.generator.grounding import AnswerStyle, Grounding
from realm.generator.pipeline import AnswerRequest
from realm.generator.prompts import Task
from realm.generator.retrieval import SearchSpec
from realm.generator.settings import GeneratorLimits
from realm.names import collection_name
from realm.v1 import common_pb2, generator_pb2

_TASKS: dict[int, Task] = {
    generator_pb2.TASK_UNSPECIFIED: "answer",
    generator_pb2.TASK_ANSWER: "answer",
    generator_pb2.TASK_SUMMARIZE: "summarize",
    generator_pb2.TASK_EXTRACT: "extract",
}
_GROUNDING: dict[int, Grounding] = {
    generator_pb2.GROUNDING_UNSPECIFIED: "strict",
    generator_pb2.GROUNDING_STRICT: "strict",
    generator_pb2.GROUNDING_CITE: "cite",
    generator_pb2.GROUNDING_FREE: "free",
}
_STYLES: dict[int, AnswerStyle] = {
    generator_pb2.ANSWER_STYLE_UNSPECIFIED: "short",
    generator_pb2.ANSWER_STYLE_SHORT: "short",
    generator_pb2.ANSWER_STYLE_SENTENCE: "sentence",
}


def sampling_from_proto(
    parameters: generator_pb2.GenerationParameters, limits: GeneratorLimits
) -> SamplingParams:
    max_new = (
        parameters.max_new_tokens
        if parameters.HasField("max_new_tokens")
        else limits.effective_default_max_new_tokens
    )
    if not 1 <= max_new <= limits.max_new_tokens:
        raise InvalidArgument(
            f"parameters.max_new_tokens={max_new} is outside 1..{limits.max_new_tokens}"
        )
    temperature = parameters.temperature if parameters.HasField("temperature") else 0.0
    if not math.isfinite(temperature) or not 0.0 <= temperature <= 2.0:
        raise InvalidArgument(
            f"parameters.temperature={temperature} is outside 0..2 (0 decodes greedily)"
        )
    top_p = parameters.top_p if parameters.HasField("top_p") else 1.0
    if not math.isfinite(top_p) or not 0.0 < top_p <= 1.0:
        raise InvalidArgument(f"parameters.top_p={top_p} is outside (0, 1]")
    stops = tuple(parameters.stop)
    if len(stops) > limits.max_stop_sequences:
        raise InvalidArgument(
            f"parameters.stop has {len(stops)} strings, above {limits.max_stop_sequences}"
        )
    for stop in stops:
        if not stop or len(stop) > limits.max_stop_chars:
            raise InvalidArgument(
                f"parameters.stop contains {shown(stop)}; each stop string needs "
                f"1..{limits.max_stop_chars} characters"
            )
    return SamplingParams(
        max_new_tokens=max_new,
        temperature=temperature,
        top_p=top_p,
        seed=parameters.seed if parameters.HasField("seed") else None,
        stop=stops,
    )


def request_from_proto(
    request: generator_pb2.GenerateRequest, limits: GeneratorLimits
) -> AnswerRequest:
    """Every field checked before any work, with messages that name the field and the limit."""
    question = request.question
    if not question.strip():
        raise InvalidArgument("question is empty; ask something")
    if len(question) > limits.max_question_chars:
        raise InvalidArgument(
            f"question has {len(question)} characters, above max_question_chars="
            f"{limits.max_question_chars}"
        )
    collection_name(request.collection)
    k = request.k or limits.default_k
    if k > limits.max_k:
        raise InvalidArgument(f"k={k} is outside 1..max_k={limits.max_k}")
    if request.mode not in common_pb2.SearchMode.values():
        raise InvalidArgument(f"mode={request.mode} is not a SearchMode value")
    if request.task not in _TASKS:
        raise InvalidArgument(f"task={request.task} is not a Task value")
    task = _TASKS[request.task]
    if request.grounding not in _GROUNDING:
        raise InvalidArgument(f"grounding={request.grounding} is not a Grounding value")
    if request.style not in _STYLES:
        raise InvalidArgument(f"style={request.style} is not an AnswerStyle value")
    if task == "extract":
        fields = validate_fields(list(request.fields), limits.max_fields)
    elif request.fields:
        raise InvalidArgument("fields is only used with TASK_EXTRACT; leave it empty")
    else:
        fields = []
    return AnswerRequest(
        question=question,
        search=SearchSpec(
            collection=request.collection,
            query=question,
            k=k,
            mode=request.mode or common_pb2.SEARCH_MODE_HYBRID,
            filter=dict(request.filter),
        ),
        params=sampling_from_proto(request.parameters, limits),
        task=task,
        fields=fields,
        allow_no_context=request.allow_no_context,
        grounding=_GROUNDING[request.grounding],
        style=_STYLES[request.style],
    )


def validate_fields(fields: Sequence[str], max_fields: int) -> list[str]:
    if not fields:
        raise InvalidArgument("fields is empty; TASK_EXTRACT needs the names of the fields to fill")
    if len(fields) > max_fields:
        raise InvalidArgument(f"fields has {len(fields)} names, above max_fields={max_fields}")
    for name in fields:
        if not FIELD_NAME.fullmatch(name) or not name.strip():
            raise InvalidArgument(
                f"fields contains {shown(name)}; a field name is 1-64 letters, digits, '_' or "
                "spaces"
            )
    if len({field_key(name) for name in fields}) != len(fields):
        raise InvalidArgument("fields contains the same name twice")
    return list(fields)
