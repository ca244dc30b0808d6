"""What the Files and Batches routes call: checks of their parameters, the stores, and the
runner to wake when a batch is created or cancelled."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kakehashi.errors import InvalidRequestError
from kakehashi.gateway.context import Principal
from kakehashi.platform.batches.model import (
    COMPLETION_WINDOWS,
    ENDPOINTS,
    MAX_INPUT_BYTES,
    MAX_METADATA_KEY,
    MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE,
    Batch,
)
from kakehashi.platform.batches.runner import BatchRunner
from kakehashi.platform.batches.store import BatchStore
from kakehashi.platform.files import MAX_EXPIRES_AFTER, MIN_EXPIRES_AFTER, FileStore


def _invalid(message: str, param: str, code: str = "invalid_value") -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code=code)


def check_metadata(metadata: Mapping[str, str] | None) -> None:
    """OpenAI's metadata bounds: 16 pairs, keys of 64 and values of 512 characters."""
    if metadata is None:
        return
    if len(metadata) > MAX_METADATA_PAIRS:
        raise _invalid(
            f"Invalid 'metadata': too many properties. Expected at most {MAX_METADATA_PAIRS}, "
            f"but got {len(metadata)}.",
            "metadata",
        )
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise _invalid(
                f"Invalid 'metadata': the key '{key[:20]}...' is longer than "
                f"{MAX_METADATA_KEY} characters.",
                "metadata",
            )
        if len(value) > MAX_METADATA_VALUE:
            raise _invalid(
                f"Invalid 'metadata.{key}': string too long. Expected at most "
                f"{MAX_METADATA_VALUE} characters, but got {len(value)}.",
                f"metadata.{key}",
            )


@dataclass
class BatchService:
    """Files and batches of the platform database, and this process's runner."""

    files: FileStore
    batches: BatchStore
    runner: BatchRunner | None = None

    def create(
        self,
        principal: Principal,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: Mapping[str, str] | None = None,
        output_expires_after: int | None = None,
    ) -> Batch:
        """A new batch of ``principal``'s input file, after checking every parameter."""
        if endpoint not in ENDPOINTS:
            supported = ", ".join(f"'{e}'" for e in ENDPOINTS)
            raise _invalid(
                f"Invalid 'endpoint': '{endpoint}' is not supported; batches run {supported}.",
                "endpoint",
            )
        if completion_window not in COMPLETION_WINDOWS:
            raise _invalid(
                f"Invalid 'completion_window': '{completion_window}'. Only '24h' is supported.",
                "completion_window",
            )
        check_metadata(metadata)
        if output_expires_after is not None and not (
            MIN_EXPIRES_AFTER <= output_expires_after <= MAX_EXPIRES_AFTER
        ):
            raise _invalid(
                "Invalid 'output_expires_after.seconds': expected an integer between "
                f"{MIN_EXPIRES_AFTER} and {MAX_EXPIRES_AFTER}, but got {output_expires_after}.",
                "output_expires_after.seconds",
            )
        found = self.files.get(input_file_id, owner=principal.key_id)
        if found.purpose != "batch":
            raise _invalid(
                f"The input file {input_file_id} has purpose '{found.purpose}'; a batch needs a "
                "file uploaded with purpose 'batch'.",
                "input_file_id",
            )
        if found.bytes > MAX_INPUT_BYTES:
            raise _invalid(
                f"The input file {input_file_id} is {found.bytes} bytes; a batch input file may "
                f"be at most {MAX_INPUT_BYTES} bytes (200 MB).",
                "input_file_id",
            )
        batch = self.batches.create(
            principal,
            input_file_id=input_file_id,
            endpoint=endpoint,
            completion_window=completion_window,
            metadata=metadata,
            output_expires_after=output_expires_after,
        )
        self.wake()
        return batch

    def cancel(self, batch_id: str, *, owner: str) -> Batch:
        """Ask for ``owner``'s batch to be cancelled."""
        batch = self.batches.cancel(batch_id, owner=owner)
        self.wake()
        return batch

    def wake(self) -> None:
        """Tell this process's runner there is news (safe from any thread)."""
        runner = self.runner
        if runner is not None:
            runner.notify_threadsafe()
