"""fusionlab.viz: pictures of the pipeline for notebooks.

* ``graph_dot`` / ``graph_svg`` / ``graph_html``: one captured graph drawn with graphviz,
  nodes colored by kind, fusion candidates as clusters (``dot`` binary optional);
* ``candidates_figure`` / ``plan_figure``: plotly charts of modeled bytes and kernels;
* ``profile_figure`` / ``profile_html``: a ProfileResult's figure and stand-alone report.

graphviz and plotly are imported when a function is called, never at import.
"""

from .charts import candidates_figure, plan_figure
from .graph import graph_dot, graph_html, graph_svg, has_dot
from .profile_report import profile_figure, profile_html

__all__ = ["candidates_figure", "graph_dot", "graph_html", "graph_svg", "has_dot", "plan_figure",
           "profile_figure", "profile_html"]
