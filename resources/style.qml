<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="Symbology|Labeling">
  <renderer-v2 type="singleSymbol" symbollevels="0" enableorderby="0" forceraster="0">
    <symbols>
      <symbol type="fill" name="0" alpha="1" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" pass="0" enabled="1" locked="0">
          <Option type="Map">
            <Option type="QString" name="color" value="255,196,0,90"/>
            <Option type="QString" name="outline_color" value="230,0,150,255"/>
            <Option type="QString" name="outline_style" value="solid"/>
            <Option type="QString" name="outline_width" value="0.8"/>
            <Option type="QString" name="outline_width_unit" value="MM"/>
            <Option type="QString" name="style" value="solid"/>
            <Option type="QString" name="joinstyle" value="round"/>
          </Option>
        </layer>
      </symbol>
    </symbols>
  </renderer-v2>
  <labeling type="simple">
    <settings calloutType="simple">
      <text-style fieldName="name" fontSize="9" textColor="60,0,40,255" fontWeight="75">
        <text-buffer bufferDraw="1" bufferSize="1" bufferColor="255,255,255,255" bufferSizeUnits="MM"/>
      </text-style>
      <placement placement="1" dist="0"/>
      <rendering obstacle="1" drawLabels="1" fontMinPixelSize="3" fontMaxPixelSize="10000" scaleVisibility="0"/>
    </settings>
  </labeling>
</qgis>
