"""Runs the generator service: model, engine, retriever connection and the shared bootstrap."""

import asyncio
import logging

from grpc import aio

from realm.generator.metrics import EngineCollector
from realm.generator.models import load_model
from realm.generator.pipeline import Pipeline
from realm.generator.prompts import PromptBuilder
from realm.generator.retrieval import RetrieverGateway
from realm.generator.scheduler import GenerationEngine
from realm.generator.servicer import GeneratorServicer
from realm.generator.settings import GeneratorConfig
from realm.server import RunningServer, serve_until_signal
from realm.v1 import generator_pb2, generator_pb2_grpc

_LOGGER = logging.getLogger(__name__)
SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name
TELEMETRY_NAME = "realm-generator"  # service.name of its spans


async def serve(config: GeneratorConfig) -> None:
    servicer = GeneratorServicer(config.limits, config.model.max_batch_size)
    gateway = RetrieverGateway(
        config.retriever_target, config.retrieval_timeout_s, config.retriever_connection()
    )
    engines: list[GenerationEngine] = []
    engine_figures = EngineCollector()

    def register(server: aio.Server) -> None:
        generator_pb2_grpc.add_GeneratorServiceServicer_to_server(servicer, server)

    async def load(_: RunningServer) -> None:
        loaded = await asyncio.to_thread(load_model, config.model)
        engine = GenerationEngine(
            loaded, config.model.max_batch_size, draft_tokens=config.model.draft_tokens
        )
        engine.start()
        engines.append(engine)
        engine_figures.attach(engine)
        prompts = PromptBuilder(loaded.tokenizer, loaded.context_tokens)
        servicer.attach(Pipeline(gateway, engine, prompts), loaded)

    async def flush() -> None:
        for engine in engines:
            await asyncio.to_thread(engine.stop)
        await gateway.close()

    await serve_until_signal(
        config.server,
        register,
        [SERVICE_NAME],
        load,
        flush,
        telemetry_name=TELEMETRY_NAME,
        collectors=[engine_figures],
    )
