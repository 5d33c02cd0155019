#pragma once
// Pipelines are written as text so every stage can be printed, dumped and
// replayed with mlir-opt; text names passes, so they must be registered.

namespace kiln::passes {

// Registers the upstream MLIR passes that kiln's pipelines name. Idempotent
// and thread-safe; call before mlir::parsePassPipeline.
void register_upstream_passes();

}  // namespace kiln::passes
