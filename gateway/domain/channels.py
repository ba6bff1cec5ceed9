"""Which channel carries a text: email (a carrier's gateway or an email-to-SMS provider, through
the own server or the relay), the company's Android phone (SMS Gate), or Twilio.

The operator lists the channels to use in preference (`[channels] order`); a text goes by the
first one that can reach its number. Email reaches a number only while its carrier's gateway is
open or a provider serves it; an SMS channel reaches every number of the countries it is limited
to (all, when it names none). The choice and why are stored with the text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from gateway.domain.carriers import GatewayAddress, Unreachable


class Channel(StrEnum):
    EMAIL = "email"
    SMSGATE = "smsgate"
    TWILIO = "twilio"


# How each channel is named to a dispatcher.
CHANNEL_NAMES = {
    Channel.EMAIL: "email",
    Channel.SMSGATE: "the company's phone (SMS Gate)",
    Channel.TWILIO: "Twilio",
}

# The longest text an SMS channel takes in one message: the phone and Twilio split it into
# parts themselves, and the person's phone joins them (Twilio's own limit is 1,600 characters).
SMS_CHANNEL_MAX_LENGTH = 1600


@dataclass(frozen=True, slots=True)
class OutgoingText:
    """One text as an SMS channel is asked to send it."""

    ref: str  # our id for it on the channel (the channel's events name it by this)
    phone: str  # E.164
    body: str
    ttl_seconds: int | None  # how long it may still go out; past that it is stale


@dataclass(frozen=True, slots=True)
class ChannelPlan:
    """The `[channels]` order and, for each SMS channel that is configured, the countries it is
    limited to (empty: every country)."""

    order: tuple[Channel, ...] = (Channel.EMAIL,)
    countries: Mapping[Channel, frozenset[str]] = field(default_factory=dict)

    def configured(self, channel: Channel) -> bool:
        return channel is Channel.EMAIL or channel in self.countries

    def reaches(self, channel: Channel, region: str | None, by_email: bool) -> str | None:
        """Why `channel` cannot reach a number of `region` (in words), or None when it can.
        `by_email`: a carrier's gateway or a provider takes texts for the number."""
        if channel is Channel.EMAIL:
            return None if by_email else "no open gateway or provider reaches it by email"
        if channel not in self.countries:
            return f"[{channel.value}] is not configured"
        limited = self.countries[channel]
        if limited and (region or "") not in limited:
            return f"{channel.value} is limited to {', '.join(sorted(limited))}"
        return None


@dataclass(frozen=True, slots=True)
class ChannelChoice:
    channel: Channel | None  # None: no channel in the order reaches the number
    why: str  # stored with the text (gateway_reason), shown by `gateway address`


def choose_channel(
    plan: ChannelPlan, region: str | None, by_email: bool, email_why: str
) -> ChannelChoice:
    """The first channel in the plan's order that reaches a number of `region`. `email_why`
    says what email would do with the text (which gateway and why), or why it cannot."""
    passed: list[str] = []
    for channel in plan.order:
        blocked = plan.reaches(channel, region, by_email)
        if blocked is None:
            if channel is Channel.EMAIL:
                return ChannelChoice(channel, email_why)
            why = f"sent by {CHANNEL_NAMES[channel]}"
            if passed:
                why += f", because {'; '.join(passed)}"
            return ChannelChoice(channel, why)
        passed.append(email_why if channel is Channel.EMAIL else blocked)
    return ChannelChoice(None, "; ".join(passed) or "no channel is configured")


def channel_for(
    plan: ChannelPlan, region: str | None, by_email: GatewayAddress | Unreachable
) -> ChannelChoice:
    """The channel for a number of `region` whose email route is `by_email` (the gateway or
    provider email would use, or why email cannot reach it)."""
    if isinstance(by_email, GatewayAddress):
        return choose_channel(plan, region, True, by_email.why)
    return choose_channel(plan, region, False, by_email.message)


def next_channel(
    plan: ChannelPlan,
    after: Channel,
    region: str | None,
    by_email: bool,
    down: Sequence[Channel] = (),
) -> Channel | None:
    """The channel after `after` in the order that reaches the number and is not `down`: where
    a text goes when its channel cannot take it and it was never handed over."""
    order = plan.order
    start = order.index(after) + 1 if after in order else 0
    for channel in order[start:]:
        if channel not in down and plan.reaches(channel, region, by_email) is None:
            return channel
    return None
