"""The built-in intake sources, registered as a plugin's would be, and building the sources a
config names (one per table: ``[[smtpd]]`` ...)."""

from __future__ import annotations

import logging

from mqd.config.schema import Config, SourceConfig
from mqd.errors import ConfigError, ConfigErrors, PluginError, raise_gathered
from mqd.intake.source import HandOver, Login, RegisterSource, Source, SourceStatus, Submission
from mqd.plugins.hookspecs import hookimpl
from mqd.plugins.host import PluginHost
from mqd.queue.keys import Handed

__all__ = ["Sources", "build_sources", "check_sources", "mqd_register_sources"]

log = logging.getLogger("mqd.intake")


@hookimpl
def mqd_register_sources(register: RegisterSource) -> None:
    # By path: aiosmtpd is imported only by a daemon whose config has an [[smtpd]] table.
    register("smtpd", "mqd.intake.smtpd.source:SMTPSource")
    # Served by the [http] server (mqd.http.submit), which asks the daemon for these sources.
    register("submit", "mqd.intake.submit.source:SubmitSource")
    # aio-pika likewise, only with a [[mailbox]] table.
    register("mailbox", "mqd.intake.mailbox.source:MailboxSource")


def build_sources(config: Config, host: PluginHost, handover: HandOver) -> list[Source]:
    """One source per source table of ``config``, each having read (and checked) its own keys.
    Raises ConfigError (every problem at once) when a table is wrong or its kind has no class."""
    problems: list[ConfigError] = []
    sources: list[Source] = []
    for source in config.sources:
        # The table's own keys are read now, after the config was loaded: their problems
        # (unknown keys included) are gathered here, not into the finished load's list.
        gathered: list[ConfigError] = []
        if source.options is not None:
            source.options.problems = gathered
        try:
            source_class = host.source_class(source.kind)
            if source_class is None:
                raise ConfigError(
                    f"no plugin registered an intake source {source.kind!r}",
                    path=config.source,
                    key=source.name,
                )
            sources.append(source_class(source, config, handover))
        except PluginError as exc:
            problems.append(ConfigError(str(exc), path=config.source, key=source.name))
        except ConfigError as exc:
            problems.append(exc)
        problems += [error for error in gathered if error not in problems]
    raise_gathered(problems)
    return sources


class _Checking:
    """The hand-over of sources built only to check their tables (``check_sources``)."""

    def check_sender(self, source: SourceConfig, sender: str, login: Login | None) -> str | None:
        raise RuntimeError("a source built to check its config hands nothing over")

    async def submit(self, source: SourceConfig, submission: Submission) -> str:
        raise RuntimeError("a source built to check its config hands nothing over")

    async def submit_once(
        self,
        source: SourceConfig,
        submission: Submission,
        key: str,
        *,
        scope: str,
        keep_for: float,
        note: str = "",
    ) -> Handed:
        raise RuntimeError("a source built to check its config hands nothing over")

    def rejected(
        self,
        source: SourceConfig,
        *,
        stage: str,
        reason: str,
        name: str,
        sender: str | None,
        recipients: tuple[str, ...],
    ) -> str:
        raise RuntimeError("a source built to check its config hands nothing over")


def check_sources(config: Config, host: PluginHost) -> list[ConfigError]:
    """The problems of ``config``'s source tables (``mqd config check``, ``mqd run``'s
    preflight): each built, never started."""
    try:
        build_sources(config, host, _Checking())
    except ConfigErrors as exc:
        return list(exc.errors)
    except ConfigError as exc:
        return [exc]
    return []


class Sources:
    """The daemon's running sources: started with it, stopped before the queue closes,
    replaced on a reload."""

    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources
        self.started = False

    async def start(self) -> None:
        """Start each source; ConfigError (an address in use) when one cannot, the others
        stopped."""
        started: list[Source] = []
        try:
            for source in self.sources:
                await source.start()
                started.append(source)
        except BaseException:
            for source in started:
                await source.stop()
            raise
        self.started = True

    async def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        for source in self.sources:
            try:
                await source.stop()
            except Exception:
                log.exception("the source %s failed to stop", source.config.name)

    async def replace(self, new: list[Source]) -> None:
        """Run ``new`` (built from a reloaded config) in place of the current ones: a source
        whose table is still there takes over from its old self when it can
        (``Source.take_over``); the others are stopped, then the new ones started."""
        if not self.started:
            self.sources = new
            return
        old = {source.config.name: source for source in self.sources}
        to_start: list[Source] = []
        for source in new:
            before = old.get(source.config.name)
            if before is not None and source.take_over(before):
                del old[source.config.name]
            else:
                to_start.append(source)
        for source in old.values():
            await source.stop()
        self.sources = new
        for source in to_start:
            try:
                await source.start()
            except (ConfigError, OSError) as exc:
                log.error("the source %s cannot start: %s", source.config.name, exc)

    def status(self) -> list[SourceStatus]:
        """Each running source's (none before ``start`` and after ``stop``)."""
        return [source.status() for source in self.sources] if self.started else []
