"""Rendering: console tables, plotly figures and the self-contained HTML dashboards."""
