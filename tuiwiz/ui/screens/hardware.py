"""Step 1: what this machine has. GPUs with their VRAM, CPU, RAM and free disk."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from tuiwiz.ui.screens.base import StepScreen
from tuiwiz.ui.widgets import meter
from tuiwiz.units import mib


def gpu_panel(gpu, width: int) -> Group:
    """One GPU: name and capabilities, a VRAM bar, utilisation, temperature, processes."""
    bar_width = max(8, min(30, width - 50))
    head = Text.assemble((f"GPU {gpu.index}  ", "bold"), (gpu.name, "bold"))
    cc = f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}"
    head.append(f"   compute {cc}   bf16 ")
    head.append("yes" if gpu.bf16 else "no (fp16 instead)", style="green" if gpu.bf16 else "yellow")
    vram = Text("  VRAM ")
    vram.append_text(meter(gpu.memory_used_mb, gpu.memory_total_mb, bar_width))
    vram.append(f" {mib(gpu.memory_used_mb)} / {mib(gpu.memory_total_mb)} used, {mib(gpu.memory_free_mb)} free")
    vram.no_wrap = True
    vram.overflow = "ellipsis"
    live = Text("  ")
    live.append(f"util {gpu.utilization_pct}%" if gpu.utilization_pct is not None else "util ?")
    live.append(f"   {gpu.temperature_c}°C" if gpu.temperature_c is not None else "")
    if gpu.processes:
        names = ", ".join(f"{p.name or '?'} ({p.pid}{', ' + mib(p.used_mb) if p.used_mb is not None else ''})"
                          for p in gpu.processes[:4])
        more = f" and {len(gpu.processes) - 4} more" if len(gpu.processes) > 4 else ""
        live.append(f"   processes: {names}{more}", style="yellow")
    else:
        live.append("   no other processes", style="dim")
    return Group(head, vram, live)


def host_table(machine, width: int) -> Table:
    bar_width = max(8, min(30, width - 50))
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    cores = f"{machine.cpu_count_physical} cores, " if machine.cpu_count_physical else ""
    table.add_row("CPU", f"{machine.cpu_model}  ({cores}{machine.cpu_count_logical} threads)")
    ram = meter(machine.ram_total_mb - machine.ram_available_mb, machine.ram_total_mb, bar_width)
    ram.append(f" {mib(machine.ram_available_mb)} available of {mib(machine.ram_total_mb)}")
    table.add_row("RAM", ram)
    disk = mib(machine.disk_free_mb) + " free" if machine.disk_free_mb is not None else "unknown"
    table.add_row("Disk", f"{disk} where runs are written ({machine.disk_path})")
    if machine.driver_version:
        table.add_row("Driver", f"{machine.driver_version}   CUDA {machine.cuda_version or '?'}")
    return table


class HardwareScreen(StepScreen):
    STEP = "hardware"
    AUTO_FOCUS = "#hardware"
    BINDINGS = [Binding("r", "probe", "Re-probe", id="probe")]

    def body(self) -> ComposeResult:
        with VerticalScroll(id="hardware", can_focus=True):
            yield Static("Looking at this machine…", id="hw-host")
            yield Static("", id="hw-notice")
            yield Static("", id="hw-gpus")

    def on_mount(self) -> None:
        super().on_mount()
        if self.state.machine is None:
            self.call_after_refresh(self.action_probe)  # the first frame first; NVML can take a moment
        else:
            self.show(self.state.machine)

    def ready(self) -> bool:
        return self.state.machine is not None

    def action_probe(self) -> None:
        self.say("probing GPUs, CPU, RAM and disk…")
        self._probe()

    @work(thread=True, exclusive=True, exit_on_error=False)
    def _probe(self) -> None:
        from tuiwiz.plan.hardware import probe

        machine = probe(self.state.workdir)
        self.app.call_from_thread(self.show, machine)

    def show(self, machine) -> None:
        if not self.is_attached:
            return
        self.state.machine = machine
        width = self.size.width or 80
        self.query_one("#hw-host", Static).update(host_table(machine, width))
        notice = self.query_one("#hw-notice", Static)
        lines = []
        if not machine.has_gpu:  # one sentence: the probe's reason, then what it means
            why = machine.notice or "no NVIDIA GPU is usable here, so training runs on the CPU"
            lines.append(Text.assemble(("CPU only. ", "bold"), why[0].upper() + why[1:].rstrip("."),
                                       ". Fine for the demo and small models, slow for anything else."))
        elif machine.notice:
            lines.append(Text(machine.notice, style="dim"))
        notice.update(Group(*lines) if lines else "")
        notice.set_class(not machine.has_gpu, "warning")
        gpus = self.query_one("#hw-gpus", Static)
        gpus.update(Group(*(gpu_panel(g, width) for g in machine.gpus)) if machine.gpus else "")
        count = len(machine.gpus)
        self.say(f"{count} GPU{'s' if count != 1 else ''} found" if count else "no GPU: CPU training")
        self.update_nav()
